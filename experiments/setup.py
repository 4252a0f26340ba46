"""The config boundary: `build(config) -> Setup`, validated once; the only reader of config fields.

    setup = setup.build(config)       # ValueError (one line) for the first bad value
    setup.task, setup.eval_tasks      # tasks.Task at the training length and each extra length
    setup.model                       # model.Model (static description of the network)
    setup.optimizer                   # Optimizer: plain values; make_optimizer(...) -> optax
    setup.run                         # Run: seeds, steps and the loop's intervals

`validate(config)` raises `ValueError` with ONE line that names the flag as the user types it
(`--config.train.learning_rate`), the value received and what is allowed, e.g.

    --config.model.cell: unknown value 'lstn'; valid: 'gru', 'irnn', 'lstm', 'mingru', ...

`experiments/main.py` exits 2 with that line (nothing written). Checks: sizes, lengths, counts
and step intervals >= 1 (seed in [0, 2**32 - num_seeds]: seeds are uint32 keys); unknown task,
task option, cell, GRU variant, initializer, optimizer and schedule names (listing the valid
ones); learning rate, eps > 0, clip >= 0, rmsprop decay in [0, 1); contradictory options (an
initializer that does nothing for the cell, checkpoints between log steps, warmup >= steps).
Whether the batch (or num_seeds) divides the devices of the mesh is checked by
`parallel.make_layout` (`build(config, with_layout=True)`), also before anything is compiled
or written.

Hashable by value: a Setup is the static argument of the jitted steps (experiments/train.py).
Every field is a NamedTuple or frozen dataclass of plain values, except the tasks, which are
closures (equal only to themselves): they are built once per (name, length, options) here. So
two Setups built from equal configs are equal, and a rerun or resume in the same process reuses
the compiled steps.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
from typing import Any, NamedTuple, Optional

import ml_collections
import numpy as np
import optax

from experiments import checks
from experiments import model as model_lib
from experiments import parallel, tasks
from gated_rnn import gru, layers


class Algorithm(str, enum.Enum):
    """The optimizer (after global-norm clipping)."""

    RMSPROP = "rmsprop"
    ADAM = "adam"


class Schedule(str, enum.Enum):
    """The learning rate over the run: constant, or cosine decay to 0 over train.steps."""

    CONSTANT = "constant"
    COSINE = "cosine"


class Optimizer(NamedTuple):
    """The `train` fields that make the optax transformation (`make_optimizer`)."""

    algorithm: Algorithm
    learning_rate: float
    rmsprop_decay: float
    eps: float
    clip: float  # global-norm clip; 0 disables it
    schedule: Schedule
    warmup_steps: int  # a linear warmup from 0 first (0: none)
    steps: int  # the cosine schedule decays over these (0 for a constant one: it reads none)
    skip_nonfinite: bool  # skip (and count) updates with non-finite gradients


class Run(NamedTuple):
    """What the training loop reads: seeds, length and the intervals of its phases."""

    seed: int
    num_seeds: int
    seq_len: int
    steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    max_checkpoints: int
    progress_every_secs: float
    fresh_start: bool
    stop_when_solved: bool

    @property
    def seeds(self) -> list[int]:
        """The S seeds of the run: seed, seed + 1, ..., seed + num_seeds - 1."""
        return [self.seed + i for i in range(self.num_seeds)]


class Setup(NamedTuple):
    """A run's config as typed, hashable values (the static argument of the jitted steps)."""

    task: tasks.Task
    eval_tasks: tuple[tasks.Task, ...]  # at the extra eval lengths (each knows its seq_len)
    model: model_lib.Model
    optimizer: Optimizer
    batch_size: int
    eval_batch_size: int
    run: Run
    layout: Optional[parallel.Layout] = None  # devices and sharding; None: one device, no mesh


# ---------------------------------------------------------------------------------------------
# The optimizer: typed values -> the optax transformation (built where it is used, in jit).

def make_schedule(opt: Optimizer) -> optax.ScalarOrSchedule:
    """Learning rate: constant or cosine decay to 0 over train.steps, after a linear warmup."""
    if opt.schedule is Schedule.COSINE:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if opt.warmup_steps else opt.learning_rate,
            peak_value=opt.learning_rate, warmup_steps=opt.warmup_steps, decay_steps=opt.steps)
    if opt.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps),
             optax.constant_schedule(opt.learning_rate)], [opt.warmup_steps])
    return opt.learning_rate  # a plain float keeps no step count in the optimizer state


def make_optimizer(opt: Optimizer) -> optax.GradientTransformation:
    """clip_by_global_norm(clip) (skipped when 0), then rmsprop or adam at the schedule."""
    lr = make_schedule(opt)
    if opt.algorithm is Algorithm.RMSPROP:
        tx = optax.rmsprop(lr, decay=opt.rmsprop_decay, eps=opt.eps)
    else:
        tx = optax.adam(lr, eps=opt.eps)
    if opt.clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip), tx)
    if opt.skip_nonfinite:
        # Skips (does not apply) an update whose gradients are not all finite; the cap keeps it
        # from ever applying one (optax applies it after max_consecutive_errors skips).
        tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
    return tx



# ---------------------------------------------------------------------------------------------
# Validation.

POSITIVE_INTS = ("seq_len", "num_seeds", "model.hidden_size", "model.num_layers", "model.unroll",
                 "train.steps", "train.batch_size", "train.log_every", "train.eval_every",
                 "train.checkpoint_every", "train.max_checkpoints", "eval.batch_size")
BOOLS = ("train.skip_nonfinite", "train.fresh_start", "train.stop_when_solved")
NUMBERS = (  # (field, condition, what is allowed)
    ("train.learning_rate", lambda v: v > 0, "expected > 0"),
    ("train.eps", lambda v: v > 0, "expected > 0"),
    ("train.clip", lambda v: v >= 0, "expected >= 0 (0 disables clipping)"),
    ("train.rmsprop_decay", lambda v: 0 <= v < 1, "expected a value in [0, 1)"),
    ("train.progress_every_secs", lambda v: v >= 0, "expected >= 0"),
    ("model.forget_bias", lambda v: True, "expected a finite number"))


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"--config.{field}: {allowed}, got {value!r}")


def _get(config: ml_collections.ConfigDict, field: str, default: Any = None) -> Any:
    node = config
    for part in field.split("."):
        if part not in node:
            return default
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line: flag, value, what is allowed) for the first bad value.

    Config-level checks only: it touches no device, so it may run before `jax.distributed`
    starts.

    Args:
      config: a task config (experiments/configs).
    """
    _check_counts(config)
    _check_names(config)
    _check_numbers(config)
    _check_contradictions(config)
    _check_task(config)


def _check_counts(config: ml_collections.ConfigDict) -> None:
    """Sizes, counts and intervals (integers), switches (booleans), the extra eval lengths."""
    for field, minimum in [(f, 1) for f in POSITIVE_INTS] + [("seed", 0),
                                                             ("train.warmup_steps", 0)]:
        checks.integer(f"--config.{field}", _get(config, field), minimum)
    # Seeds are uint32 keys: seed + num_seeds - 1 must fit.
    checks.integer("--config.seed", config.seed, 0, 2**32 - config.num_seeds)
    for field in BOOLS:
        value = _get(config, field, False)
        if not isinstance(value, (bool, np.bool_)):
            _fail(field, value, "expected True or False")
    seq_lens = _get(config, "eval.seq_lens")
    if not isinstance(seq_lens, (tuple, list)) or any(
            not checks.is_int(v) or v < 1 for v in seq_lens):
        _fail("eval.seq_lens", seq_lens, "expected a tuple of integers >= 1, e.g. '(200,400)'")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    """Rates, eps, clip, decay and biases: finite and in range."""
    for field, ok, allowed in NUMBERS:
        value = _get(config, field)
        if not _is_number(value) or not math.isfinite(value) or not ok(value):
            _fail(field, value, allowed)
    m = config.model
    if m.chrono_max_len is not None and (not checks.is_int(m.chrono_max_len)
                                         or m.chrono_max_len < 3):
        _fail("model.chrono_max_len", m.chrono_max_len, "expected unset or an integer >= 3")


def _check_names(config: ml_collections.ConfigDict) -> None:
    """Every string field names something that exists."""
    m, t = config.model, config.train
    for field, value, valid, what in (
            ("task.name", config.task.name, tasks.TASKS, "task"),
            ("model.cell", m.cell, [c.value for c in layers.CellType], "value"),
            ("model.gru_variant", m.gru_variant, [v.value for v in gru.Variant], "value"),
            ("model.init", m.init, [v.value for v in layers.Init], "value"),
            ("model.dtype", m.get("dtype", "float32"), list(model_lib.DTYPES), "value"),
            ("train.optimizer", t.optimizer, [a.value for a in Algorithm], ""),
            ("train.schedule", t.schedule, [s.value for s in Schedule], "")):
        checks.one_of(f"--config.{field}", value, valid, what)


def _check_contradictions(config: ml_collections.ConfigDict) -> None:
    """Values that are valid alone but not together."""
    m, t = config.model, config.train
    if m.cell in ("rnn", "irnn", "urlstm") and m.init == "chrono":
        # forget_bias stays allowed for these (documented as the default init there; sweeps
        # cross it with every cell), chrono is only ever asked for by mistake.
        why = "UGI is its own forget-gate init" if m.cell == "urlstm" else "no gates"
        _fail("model.init", m.init, f"has no effect for cell {m.cell!r} ({why}); use "
                                    f"'default', 'forget_bias' or 'torch' for {m.cell}")
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


def _task_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {k: v for k, v in config.task.items() if k != "name"}


def _check_task(config: ml_collections.ConfigDict) -> None:
    """The task's option names, then its own checks (e.g. adding's minimum length) at every
    length the run uses."""
    make = tasks.TASKS[config.task.name]
    options = _task_options(config)
    valid = [p for p in inspect.signature(make).parameters if p != "seq_len"]
    for option, value in options.items():
        if option not in valid:
            _fail(f"task.{option}", value,
                  f"not an option of task {config.task.name!r}; valid: {valid}")
    for length in (config.seq_len, *config.eval.seq_lens):
        try:
            make(seq_len=length, **options)
        except ValueError as e:
            field = "seq_len" if length == config.seq_len else "eval.seq_lens"
            name, _, rest = str(e).partition(": ")
            if name.startswith("task."):
                field = name
            raise ValueError(f"--config.{field}: {rest or e}") from None


# ---------------------------------------------------------------------------------------------
# Building.

@functools.cache
def _task(name: str, seq_len: int, options: tuple[tuple[str, Any], ...]) -> tasks.Task:
    # One Task per value: Tasks are closures, equal only to themselves (see the module doc).
    return tasks.make(name, seq_len=seq_len, **dict(options))


def make_task(config: ml_collections.ConfigDict, seq_len: Optional[int] = None) -> tasks.Task:
    """The config's task at `seq_len` (default: config.seq_len); options from `config.task`."""
    options = tuple(sorted(_task_options(config).items()))
    return _task(config.task.name, seq_len or config.seq_len, options)


def _optimizer(t: ml_collections.ConfigDict) -> Optimizer:
    schedule = Schedule(t.schedule)  # a budget only a cosine reads, so only it splits compiles
    return Optimizer(algorithm=Algorithm(t.optimizer), learning_rate=t.learning_rate,
                     rmsprop_decay=t.rmsprop_decay, eps=t.eps, clip=t.clip, schedule=schedule,
                     warmup_steps=t.warmup_steps,
                     steps=t.steps if schedule is Schedule.COSINE else 0,
                     skip_nonfinite=bool(t.get("skip_nonfinite", False)))


def _model(m: ml_collections.ConfigDict, task: tasks.Task) -> model_lib.Model:
    return model_lib.build(task, cell=m.cell, gru_variant=m.gru_variant,
                           hidden_size=m.hidden_size, num_layers=m.num_layers, init=m.init,
                           forget_bias=m.forget_bias, chrono_max_len=m.chrono_max_len,
                           unroll=m.unroll, dtype=m.get("dtype", "float32"))


def _run(config: ml_collections.ConfigDict) -> Run:
    t = config.train
    return Run(seed=config.seed, num_seeds=config.num_seeds, seq_len=config.seq_len,
               steps=t.steps, log_every=t.log_every, eval_every=t.eval_every,
               checkpoint_every=t.checkpoint_every, max_checkpoints=t.max_checkpoints,
               progress_every_secs=t.progress_every_secs,
               fresh_start=bool(t.get("fresh_start", False)),
               stop_when_solved=bool(t.get("stop_when_solved", False)))


def build(config: ml_collections.ConfigDict, *, with_layout: bool = False) -> Setup:
    """Validates the config and builds its typed Setup: task, model, optimizer, run options.

    Starts `jax.distributed` first if the config asks for it (`parallel.initialize`).

    Args:
      config: a task config (experiments/configs).
      with_layout: also lay the run out over the devices (`parallel.make_layout`), as the
        trainer does; without it the steps run on one device with no mesh.

    Raises:
      ValueError: one line naming the first bad field (see `validate`).
    """
    parallel.initialize(config)  # jax.distributed first: the layout touches the devices
    validate(config)
    task = make_task(config)
    return Setup(
        task=task, eval_tasks=tuple(make_task(config, n) for n in config.eval.seq_lens),
        model=_model(config.model, task), optimizer=_optimizer(config.train),
        batch_size=config.train.batch_size, eval_batch_size=config.eval.batch_size,
        run=_run(config), layout=parallel.make_layout(config) if with_layout else None)
