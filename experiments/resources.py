"""Does a run fit in memory? `check_memory(setup, state)` answers before anything is compiled.

A model or batch too large for the machine does not fail fast on its own: XLA allocates (or the
host swaps) and the run sits at 0% CPU. So the trainer estimates the bytes a run needs, by
arithmetic on its sizes, and refuses in one line when the estimate exceeds the memory available:

    state       params + optimizer state + keys (the TrainState) twice (the step's input and
                output), plus the gradients (as large as the params)
    train step  activations the backward pass keeps: per seed, batch, input step and layer the
                two gate projections (G*H each) and the carry (2*H), plus inputs and outputs
    eval step   the same forward only, one layer live, at the longest eval length and
                eval.batch_size

in float32 bytes. The estimate is a lower bound of what XLA allocates (it ignores temporaries
and fusion), so a refused run would not have fitted; a run near the limit may still fail.
Available memory: the host's MemAvailable (/proc/meminfo) on CPU, the devices' `bytes_limit` on
accelerators.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import numpy as np

from experiments import checkpoint
from experiments import setup as setup_lib

FLOAT = 4  # bytes


def estimate(setup: setup_lib.Setup, state: Any) -> dict[str, int]:
    """{"state", "train step", "eval step"}: estimated bytes of each (see the module doc).

    Args:
      setup: the run's Setup.
      state: the TrainState or its shapes (`jax.eval_shape`), leading seed axis [S].
    """
    seeds = setup.run.num_seeds
    spec = setup.model.spec
    hidden = spec.hidden_size
    # The widest kernel column count is the gate projection width G*H (per direction).
    width = max(int(x.shape[-1]) for x in jax.tree.leaves(state.params))
    per_step = spec.num_layers * (2 * width + 2 * hidden)

    def activations(task, batch, per_step):
        return seeds * batch * task.length * (per_step + task.input_size + task.output_size)

    eval_tasks = (setup.task, *setup.eval_tasks)
    return {"state": 2 * checkpoint.state_nbytes(state) + checkpoint.state_nbytes(state.params),
            "train step": FLOAT * activations(setup.task, setup.batch_size, per_step),
            "eval step": FLOAT * max(activations(t, setup.eval_batch_size, width + hidden)
                                     for t in eval_tasks)}


def available_memory() -> Optional[int]:
    """Bytes the run can use: the devices' limit on an accelerator, else the host's available
    memory; None if unknown."""
    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        try:
            return sum(int(d.memory_stats()["bytes_limit"]) for d in devices)
        except (TypeError, KeyError, AttributeError, RuntimeError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(setup: setup_lib.Setup, state: Any, available: Optional[int] = None) -> None:
    """ValueError (one line: each part's size and the memory available) if the run cannot fit.

    Args:
      setup: the run's Setup.
      state: the TrainState or its shapes, leading seed axis [S].
      available: bytes available (default: `available_memory()`; unknown: no check).
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    parts = estimate(setup, state)
    need = parts["state"] + max(parts["train step"], parts["eval step"])
    if need > available:
        sizes = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items())
        raise ValueError(
            f"the run needs at least {_gib(need)} of memory ({sizes}), more than the "
            f"{_gib(available)} this machine has available ({jax.default_backend()}); lower "
            f"--config.model.hidden_size, --config.train.batch_size, --config.eval.batch_size, "
            f"--config.seq_len or --config.num_seeds")


def state_shapes(init_one, setup: setup_lib.Setup) -> Any:
    """The TrainState's shapes and dtypes, [S, ...], without allocating or compiling anything.

    Args:
      init_one: `(setup, seed) -> TrainState` of one model (train._init_one).
    """
    one = jax.eval_shape(functools.partial(init_one, setup), jax.ShapeDtypeStruct((), np.uint32))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((setup.run.num_seeds, *x.shape), x.dtype),
                        one)
