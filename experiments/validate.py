"""Checks every config value before anything is compiled or written.

`validate(config)` raises `ValueError` with ONE line that names the flag as the user types it
(`--config.train.learning_rate`), the value received and what is allowed, e.g.

    --config.model.cell: unknown value 'lstn'; valid: 'gru', 'lstm', 'rnn'

`experiments/main.py` calls it first and exits non-zero with that line (no file written).
Checks: sizes, lengths, counts and step intervals >= 1 (seed >= 0); unknown task, task option,
cell, GRU variant, initializer, optimizer and schedule names (listing the valid ones); learning
rate, eps > 0, clip >= 0, rmsprop decay in [0, 1); contradictory options (an initializer that
does nothing for the cell, checkpoints between log steps, warmup >= steps); and a batch size
that the device count does not divide.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import ml_collections
import numpy as np

from experiments import tasks
from gated_rnn import gru, layers

OPTIMIZERS = ("adam", "rmsprop")
SCHEDULES = ("constant", "cosine")
POSITIVE_INTS = ("seq_len", "num_seeds", "model.hidden_size", "model.num_layers", "model.unroll",
                 "train.steps", "train.batch_size", "train.log_every", "train.eval_every",
                 "train.checkpoint_every", "train.max_checkpoints", "eval.batch_size")
BOOLS = ("train.skip_nonfinite", "train.fresh_start", "train.stop_when_solved")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"--config.{field}: {allowed}, got {value!r}")


def _get(config: ml_collections.ConfigDict, field: str, default: Any = None) -> Any:
    node = config
    for part in field.split("."):
        if part not in node:
            return default
        node = node[part]
    return node


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _one_of(field: str, value: Any, valid, what: str = "value") -> None:
    if value not in valid:
        raise ValueError(f"--config.{field}: unknown {what + ' ' if what else ''}{value!r}; valid: "
                         f"{', '.join(repr(v) for v in sorted(valid))}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line: flag, value, what is allowed) for the first bad value.

    Config-level checks only: it touches no device, so it may run before `jax.distributed`
    starts. Whether the batch (or num_seeds) divides the devices of the mesh actually used is
    checked by `parallel.make_layout`, also before anything is compiled or written.

    Args:
      config: a task config (experiments/configs).
    """
    for field in POSITIVE_INTS:
        value = _get(config, field)
        if not _is_int(value) or value < 1:
            _fail(field, value, "expected an integer >= 1")
    for field, minimum in (("seed", 0), ("train.warmup_steps", 0)):
        value = _get(config, field)
        if not _is_int(value) or value < minimum:
            _fail(field, value, f"expected an integer >= {minimum}")
    for field in BOOLS:
        value = _get(config, field, False)
        if not isinstance(value, (bool, np.bool_)):
            _fail(field, value, "expected True or False")
    seq_lens = _get(config, "eval.seq_lens")
    if not isinstance(seq_lens, (tuple, list)) or any(not _is_int(v) or v < 1 for v in seq_lens):
        _fail("eval.seq_lens", seq_lens, "expected a tuple of integers >= 1, e.g. '(200,400)'")

    # Names.
    _one_of("task.name", config.task.name, tasks.TASKS, "task")
    m, t = config.model, config.train
    _one_of("model.cell", m.cell, [c.value for c in layers.CellType])
    _one_of("model.gru_variant", m.gru_variant, [v.value for v in gru.Variant])
    _one_of("model.init", m.init, [v.value for v in layers.Init])
    _one_of("train.optimizer", t.optimizer, OPTIMIZERS, "")
    _one_of("train.schedule", t.schedule, SCHEDULES, "")

    # Numbers.
    for field, ok, allowed in (
            ("train.learning_rate", lambda v: v > 0, "expected > 0"),
            ("train.eps", lambda v: v > 0, "expected > 0"),
            ("train.clip", lambda v: v >= 0, "expected >= 0 (0 disables clipping)"),
            ("train.rmsprop_decay", lambda v: 0 <= v < 1, "expected a value in [0, 1)"),
            ("train.progress_every_secs", lambda v: v >= 0, "expected >= 0"),
            ("model.forget_bias", lambda v: True, "expected a finite number")):
        value = _get(config, field)
        if not _is_number(value) or not math.isfinite(value) or not ok(value):
            _fail(field, value, allowed)
    if m.chrono_max_len is not None and (not _is_int(m.chrono_max_len) or m.chrono_max_len < 3):
        _fail("model.chrono_max_len", m.chrono_max_len, "expected unset or an integer >= 3")

    # Contradictions.
    if m.cell == "rnn" and m.init == "chrono":
        # forget_bias stays allowed for rnn (documented as the default init there; sweeps
        # cross it with every cell), chrono is only ever asked for by mistake.
        _fail("model.init", m.init, "has no effect for cell 'rnn' (no gates); use 'default', "
                                    "'forget_bias' or 'torch' for rnn")
    if m.cell != "gru" and m.gru_variant != "reset_after":
        _fail("model.gru_variant", m.gru_variant, f"only applies to cell 'gru' (cell is "
                                                  f"{m.cell!r}): leave it 'reset_after'")
    if t.warmup_steps and t.warmup_steps >= t.steps:
        _fail("train.warmup_steps", t.warmup_steps, f"expected < train.steps={t.steps}")
    if t.checkpoint_every % t.log_every:
        # A checkpoint between log steps would drop the pending step metrics on resume, so the
        # resumed metrics would differ from an uninterrupted run's.
        _fail("train.checkpoint_every", t.checkpoint_every,
              f"expected a multiple of train.log_every={t.log_every}")

    # Task options: names, then the task's own checks (e.g. adding's minimum length).
    make = tasks.TASKS[config.task.name]
    options = [k for k in config.task if k != "name"]
    valid = [p for p in inspect.signature(make).parameters if p != "seq_len"]
    for option in options:
        if option not in valid:
            _fail(f"task.{option}", config.task[option],
                  f"not an option of task {config.task.name!r}; valid: {valid}")
    for length in (config.seq_len, *seq_lens):
        try:
            make(seq_len=length, **{k: config.task[k] for k in options})
        except ValueError as e:
            field = "seq_len" if length == config.seq_len else "eval.seq_lens"
            name, _, rest = str(e).partition(": ")
            if name.startswith("task."):
                field = name
            raise ValueError(f"--config.{field}: {rest or e}") from None
