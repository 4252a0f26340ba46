"""Shared pieces of the task configs (`copy.py`, `adding.py`).

Each config file defines `get_config(arg=None) -> ConfigDict`. `arg` is what follows the colon in
`--config=experiments/configs/copy.py:ARG`, a comma-separated list of:
  smoke        tiny sizes for tests and CI (a run takes seconds);
  seq_len=N    the task length T (the same as `--config.seq_len=N`; kept for sweeps' file specs);
  tallec, arjovsky   a paper's training recipe (configs/recipes.py), chrono's T_max from the
               final seq_len and task (re-derived after `--config.` / `--set` overrides of
               seq_len or task.variable_delay, unless model.chrono_max_len is set too).
e.g. `copy.py:smoke`, `copy.py:seq_len=200`, `copy.py:smoke,seq_len=50`. Plain values are set with
`--config.FIELD=VALUE` (e.g. `--config.model.cell=gru --config.train.steps=5000`).

Fields (users type these names):
  seq_len, seed, num_seeds (seed i of S trains with seed + i, in one vmapped program)
  task.name, task.<options>   (copy: variable_delay; adding: form)
  model.cell (rnn/lstm/gru), model.gru_variant (reset_after/reset_before), model.hidden_size,
  model.num_layers, model.init (default/forget_bias/chrono/torch), model.forget_bias,
  model.chrono_max_len (unset: the task's input length), model.unroll,
  model.dtype (float32/bfloat16/float16: the recurrent stack's params, state and math)
  train.steps, train.batch_size, train.optimizer (rmsprop/adam), train.learning_rate,
  train.rmsprop_decay, train.eps, train.clip (global-norm clip; 0 disables),
  train.schedule (constant/cosine), train.warmup_steps (a linear warmup first), train.log_every,
  train.eval_every (stop_when_solved reads these evals), train.checkpoint_every,
  train.max_checkpoints, train.progress_every_secs,
  train.skip_nonfinite (skip and count non-finite updates), train.fresh_start (move an existing
  run aside instead of resuming it), train.stop_when_solved (finish after the first eval at which
  every seed is solved; on in sweeps and the horizon search)
  eval.batch_size, eval.seq_lens (extra lengths to evaluate at, e.g. "(200,400)")
  parallel.shard (batch: split each batch over the devices; seeds: split num_seeds over them),
  parallel.num_devices (0: every visible device),
  parallel.cpu_devices (CPU: XLA devices to create, one per core by default; see parallel.py)
  distributed.coordinator_address (host:port of process 0; unset: one process),
  distributed.num_processes, distributed.process_id, distributed.coordinator_bind_address,
  distributed.auto (detect the cluster from the environment, e.g. SLURM),
  distributed.initialization_timeout_s, distributed.heartbeat_timeout_s
  (see experiments/parallel.py)
`experiments/setup.py` validates every field (one line naming `--config.FIELD`) and turns them
into typed values; no other module reads them.
"""

from __future__ import annotations

from typing import Iterable, Optional

import ml_collections
from ml_collections import config_dict

from experiments.configs import recipes


def base_config() -> ml_collections.ConfigDict:
    """Fields common to every task; the task configs set the task and the published sizes."""
    c = ml_collections.ConfigDict()
    c.task = ml_collections.ConfigDict({"name": ""})
    c.seq_len = 100
    c.seed = 0
    c.num_seeds = 1

    c.model = ml_collections.ConfigDict()
    c.model.cell = "lstm"
    c.model.gru_variant = "reset_after"
    c.model.hidden_size = 128
    c.model.num_layers = 1
    c.model.init = "default"
    c.model.forget_bias = 1.0
    c.model.chrono_max_len = config_dict.placeholder(int)
    c.model.unroll = 1
    c.model.dtype = "float32"

    c.train = ml_collections.ConfigDict()
    c.train.steps = 20_000
    c.train.batch_size = 20
    c.train.optimizer = "rmsprop"
    c.train.learning_rate = 1e-3
    c.train.rmsprop_decay = 0.9
    c.train.eps = 1e-8
    c.train.clip = 1.0
    c.train.schedule = "constant"
    c.train.warmup_steps = 0
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.checkpoint_every = 1000
    c.train.max_checkpoints = 2
    c.train.progress_every_secs = 10.0
    c.train.skip_nonfinite = False  # skip (and count) non-finite updates instead of stopping
    c.train.fresh_start = False     # move an existing run in the workdir aside and start over
    c.train.stop_when_solved = False  # stop after an eval at which every seed is solved

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 1000
    c.eval.seq_lens = ()

    c.parallel = ml_collections.ConfigDict()
    c.parallel.shard = "batch"
    c.parallel.num_devices = 0
    c.parallel.cpu_devices = 0  # 0: one per core (dividing the batch); N: N (experiments/parallel.py)

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = config_dict.placeholder(str)
    c.distributed.coordinator_bind_address = config_dict.placeholder(str)
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.auto = False
    c.distributed.initialization_timeout_s = 300
    c.distributed.heartbeat_timeout_s = 100
    return c


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Tiny sizes: a whole run takes seconds on a CPU (tests, CI)."""
    c.model.hidden_size = 16
    c.train.steps = 40
    c.train.batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.train.progress_every_secs = 1.0
    c.eval.batch_size = 32


def recipe_in(arg: Optional[str]) -> Optional[str]:
    """The recipe a `get_config` argument names (e.g. "tallec" in "tallec,seq_len=200"), or None."""
    return next((t.strip() for t in (arg or "").split(",") if t.strip() in recipes.RECIPES),
                None)


def rederive(c: ml_collections.ConfigDict, arg: Optional[str],
             overridden: Iterable[str]) -> None:
    """Recomputes, after the overrides, what the argument's recipe derived from other fields.

    A recipe's chrono T_max reads `seq_len` and `task.variable_delay`
    (`recipes.chrono_max_len`); an override of either after `get_config`
    (`--config.seq_len=750`, `--set=task.variable_delay=True`) would otherwise keep the T_max of
    the old values. An override of `model.chrono_max_len` itself (in `overridden`, the dotted
    fields the overrides set) wins.
    """
    recipe = recipe_in(arg)
    if recipe is not None and "model.chrono_max_len" not in set(overridden):
        c.model.chrono_max_len = recipes.chrono_max_len(c, recipe)


def apply_arg(c: ml_collections.ConfigDict, arg: Optional[str], smoke_seq_len: int) -> None:
    """Applies a `get_config` argument ("smoke", "seq_len=N", comma-separated) to `c`."""
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    seq_len = recipe = None
    for token in tokens:
        if token == "smoke":
            apply_smoke(c)
            c.seq_len = smoke_seq_len
        elif token in recipes.RECIPES:
            recipe = token
            recipes.apply(c, recipe)
        elif token.startswith("seq_len="):
            value = token.split("=", 1)[1]
            try:
                seq_len = int(value)
            except ValueError:
                raise ValueError(f"config arg: seq_len must be an integer, got {value!r}") from None
        else:
            raise ValueError(f"config arg: unknown token {token!r} in {arg!r}; valid: 'smoke', "
                             f"'seq_len=N', a recipe ({', '.join(recipes.RECIPES)}), "
                             f"comma-separated (e.g. 'tallec,seq_len=200')")
    if seq_len is not None:  # after presets, whatever the order
        c.seq_len = seq_len
    if recipe is not None:  # the recipe's T_max rule reads the final seq_len
        c.model.chrono_max_len = recipes.chrono_max_len(c, recipe)
