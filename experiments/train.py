"""The training loop for every task: `train_and_evaluate(config, workdir)`.

Pieces, each usable alone (tests, notebooks):
  make_setup(config)          the boundary: config strings -> Task, Model, optax optimizer
  make_optimizer(config)      clip_by_global_norm -> rmsprop / adam, with an optional schedule
  create_train_state(...)     S independent models stacked on a leading seed axis
  loss_fn(setup, params, batch)           -> (loss, metrics), one model
  train_step(setup, state, batch)         jitted, vmapped over seeds -> (state, metrics)
  sample_batch(setup, state)              jitted: the training batch of step state.step
  eval_step(setup, task, params, key)     jitted: metrics on a fixed eval batch
  evaluate(setup, state)                  every eval split -> {split: metrics [S]}
  save_checkpoint / restore_checkpoint    orbax CheckpointManager in workdir/checkpoints

Seeds: `num_seeds = S` trains S models with `jax.vmap` over a leading axis of the whole state, in
one compiled step. Seed i of a run with base seed s is built from `jax.random.key(s + i)` alone
(init key fold_in(k, 0), data key fold_in(k, 1), eval key fold_in(k, 2)), so it is the same
model as a run with `seed = s + i, num_seeds = 1`.

Data: the batch of step n (n = 0, 1, ...) is `task.sample(fold_in(data_key, n), batch_size)`,
drawn on the device; eval batches come from the eval key and are the same at every evaluation.

Outputs in the workdir: metrics.jsonl (one JSON row per logged step and split), tb/ (TensorBoard
events with the same curves), checkpoints/ (orbax), config.json, and result.json when the run has
finished; experiments/outputs.py writes all but the checkpoints. Rerunning the same command in the
same workdir resumes from the latest checkpoint and ends bitwise equal to an uninterrupted run
(CPU; tested).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from experiments import checkpoint
from experiments import model as model_lib
from experiments import outputs
from experiments import parallel
from experiments import tasks
from experiments import validate

OPTIMIZERS = {
    "rmsprop": lambda lr, t: optax.rmsprop(lr, decay=t.rmsprop_decay, eps=t.eps),
    "adam": lambda lr, t: optax.adam(lr, eps=t.eps),
}
SCHEDULES = ("constant", "cosine")
EVAL = outputs.EVAL  # the split of the evaluation at the training length


class TrainState(NamedTuple):
    """Everything a run needs to continue; every field has a leading seed axis [S].

    step: [S] int32 number of steps taken (equal across seeds).
    params: model params (see `model.init`).
    opt_state: the optax state.
    data_key: [S, 2] uint32 raw key data of the training stream (`jax.random.key_data`).
    eval_key: [S, 2] uint32 raw key data of the fixed eval batches.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    data_key: jax.Array
    eval_key: jax.Array


class Setup(NamedTuple):
    """Typed, hashable view of a config (a static argument of the jitted steps)."""

    task: tasks.Task
    eval_tasks: tuple  # (Task, ...) at the extra eval lengths
    model: model_lib.Model
    optimizer: optax.GradientTransformation
    batch_size: int
    eval_batch_size: int
    layout: Optional[parallel.Layout] = None  # devices and sharding; None: one device, no mesh


def quiet_orbax_logs() -> None:
    """Drops orbax's INFO lines (a few dozen per save) from absl's log; warnings still show."""
    def keep(record) -> bool:
        return record.levelno >= 30 or "orbax" not in record.pathname  # 30: Python's WARNING
    logging.get_absl_logger().addFilter(keep)


# ---------------------------------------------------------------------------------------------
# The boundary: config -> typed values.

def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field (before anything is compiled or written)."""
    validate.validate(config)  # one-line messages naming --config.<field>; the checks below stay
    for name in ("seq_len", "num_seeds", "model.hidden_size", "model.num_layers", "train.steps",
                 "train.batch_size", "train.log_every", "train.eval_every",
                 "train.checkpoint_every", "train.max_checkpoints", "eval.batch_size"):
        section, _, field = name.rpartition(".")
        _check_int(name, (config[section] if section else config)[field])
    _check_int("seed", config.seed, minimum=0)
    _check_int("train.warmup_steps", config.train.warmup_steps, minimum=0)
    for length in config.eval.seq_lens:
        _check_int("eval.seq_lens", length)
    t = config.train
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer: unknown {t.optimizer!r}; valid: {sorted(OPTIMIZERS)}")
    if t.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule: unknown {t.schedule!r}; valid: {list(SCHEDULES)}")
    if not t.learning_rate > 0:
        raise ValueError(f"train.learning_rate: expected > 0, got {t.learning_rate!r}")
    if not t.clip >= 0:
        raise ValueError(f"train.clip: expected >= 0 (0 disables clipping), got {t.clip!r}")
    if t.warmup_steps >= t.steps and t.warmup_steps > 0:
        raise ValueError(f"train.warmup_steps: expected < train.steps={t.steps}, "
                         f"got {t.warmup_steps}")


def make_task(config: ml_collections.ConfigDict, seq_len: Optional[int] = None) -> tasks.Task:
    """The config's task at `seq_len` (default: config.seq_len); options from `config.task`."""
    options = {k: v for k, v in config.task.items() if k != "name"}
    return tasks.make(config.task.name, seq_len=seq_len or config.seq_len, **options)


def make_schedule(config: ml_collections.ConfigDict) -> optax.ScalarOrSchedule:
    """Learning rate: constant or cosine decay to 0 over train.steps, after a linear warmup."""
    t = config.train
    if t.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if t.warmup_steps else t.learning_rate, peak_value=t.learning_rate,
            warmup_steps=t.warmup_steps, decay_steps=t.steps)
    if t.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps),
             optax.constant_schedule(t.learning_rate)], [t.warmup_steps])
    return t.learning_rate  # a plain float keeps no step count in the optimizer state


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """clip_by_global_norm(train.clip) (skipped when 0), then rmsprop or adam at the schedule."""
    t = config.train
    opt = OPTIMIZERS[t.optimizer](make_schedule(config), t)
    if t.clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(t.clip), opt)
    if t.get("skip_nonfinite", False):
        # Skips (does not apply) an update whose gradients are not all finite; the cap keeps it
        # from ever applying one (optax applies it after max_consecutive_errors skips).
        opt = optax.apply_if_finite(opt, max_consecutive_errors=2**30)
    return opt


_SETUPS: dict[str, Setup] = {}  # config -> Setup, so equal configs share compiled steps
_MAX_SETUPS = 32


def make_setup(config: ml_collections.ConfigDict) -> Setup:
    """Validates the config and builds the typed Setup: task, model, optimizer, sizes.

    Equal configs (up to seed and num_seeds, which the Setup does not hold) give the same Setup
    object, so a rerun in the same process (a resumed run, a test) reuses the compiled steps.
    """
    parallel.initialize(config)  # jax.distributed first: validation may touch the devices
    validate_config(config)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("seed", "num_seeds")}
    cache_key = json.dumps(fields, sort_keys=True, default=repr)
    if cache_key not in _SETUPS:
        task = make_task(config)
        eval_tasks = tuple(make_task(config, length) for length in config.eval.seq_lens)
        if len(_SETUPS) >= _MAX_SETUPS:
            _SETUPS.pop(next(iter(_SETUPS)))
        _SETUPS[cache_key] = Setup(
            task=task, eval_tasks=eval_tasks, model=model_lib.from_config(config, task),
            optimizer=make_optimizer(config), batch_size=config.train.batch_size,
            eval_batch_size=config.eval.batch_size)
    return _SETUPS[cache_key]


# ---------------------------------------------------------------------------------------------
# State and steps.

def _seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    root = jax.random.key(seed)
    return tuple(jax.random.fold_in(root, i) for i in range(3))


@functools.partial(jax.jit, static_argnums=0)
def _init_one(setup: Setup, seed: jax.Array) -> TrainState:
    init_key, data_key, eval_key = _seed_keys(seed)
    params = model_lib.init(init_key, setup.model)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.optimizer.init(params),
                      data_key=jax.random.key_data(data_key),
                      eval_key=jax.random.key_data(eval_key))


def create_train_state(setup: Setup, seed: int, num_seeds: int = 1) -> TrainState:
    """Fresh state of `num_seeds` models, seeds seed .. seed + num_seeds - 1, stacked [S, ...].

    Each seed is initialised on its own (not vmapped), so seed i's params are exactly those of a
    single-seed run with seed + i.
    """
    states = [_init_one(setup, jnp.asarray(seed + i, jnp.uint32)) for i in range(num_seeds)]
    # Committed to the device like a state restored by orbax, so that train_step's compile
    # cache (which keys on commitment) is shared by fresh and resumed runs.
    return jax.device_put(_stack(states), jax.local_devices()[0])


@jax.jit
def _stack(states: list[TrainState]) -> TrainState:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def loss_fn(setup: Setup, params: Any, batch: tasks.Batch) -> tuple[jax.Array, dict]:
    """Loss and metrics of one model on one batch."""
    outputs = model_lib.apply(setup.model, params, batch.inputs)
    return setup.task.loss_and_metrics(outputs, batch)


def _train_step_one(setup: Setup, state: TrainState, batch: tasks.Batch, all_reduce=None):
    # The one place gradients are computed and applied. all_reduce: data parallelism's mean of
    # (grads, metrics) over the devices' batch slices (parallel.sharded_step).
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, setup), has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch)
    if all_reduce is not None:
        grads, metrics = all_reduce(grads, metrics)
    updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    if isinstance(opt_state, optax.ApplyIfFiniteState):  # train.skip_nonfinite
        metrics["skipped_updates"] = 1 - opt_state.last_finite.astype(jnp.int32)
    return state._replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


@functools.partial(jax.jit, static_argnums=0)
def train_step(setup: Setup, state: TrainState, batch: tasks.Batch) -> tuple[TrainState, dict]:
    """One optimizer step of every seed.

    Args:
      setup: the Setup (static).
      state: TrainState with leading seed axis [S].
      batch: Batch with leading seed axis, inputs [S, B, T, I].

    Returns:
      (new state, metrics {name: [S]}): the task's metrics on this batch (before the update)
      and the gradient's global norm.
    """
    if setup.layout is not None:
        return parallel.sharded_step(setup.layout, functools.partial(_train_step_one, setup))(
            state, batch)
    return jax.vmap(functools.partial(_train_step_one, setup))(state, batch)


def _sample_one(task: tasks.Task, batch_size: int, key_data: jax.Array, index: jax.Array):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), index)
    return task.sample(key, batch_size)


@functools.partial(jax.jit, static_argnums=0)
def sample_batch(setup: Setup, state: TrainState) -> tasks.Batch:
    """The training batch of step `state.step` of every seed: inputs [S, B, T, I]."""
    sample = functools.partial(_sample_one, setup.task, setup.batch_size)
    batch = jax.vmap(sample)(state.data_key, state.step)
    # Sharded: XLA splits the sampling over the devices (partitionable threefry: same values).
    return batch if setup.layout is None else parallel.constrain_batch(setup.layout, batch)


@functools.partial(jax.jit, static_argnums=(0, 1))
def eval_step(setup: Setup, task: tasks.Task, params: Any, eval_key: jax.Array) -> dict:
    """Metrics {name: [S]} of every seed on its fixed eval batch of `task`.

    The eval batch is drawn from fold_in(eval_key, task.seq_len), the same at every call.
    """
    def one(params, key_data):
        batch = _sample_one(task, setup.eval_batch_size, key_data, task.seq_len)
        outputs = model_lib.apply(setup.model, params, batch.inputs)
        return task.loss_and_metrics(outputs, batch)[1]
    metrics = jax.vmap(one)(params, eval_key)
    return metrics if setup.layout is None else parallel.replicate(setup.layout, metrics)


def evaluate(setup: Setup, state: TrainState) -> dict[str, dict[str, np.ndarray]]:
    """Evaluates every seed: {split: {metric: [S] numpy}}, with per-seed "solved" for each split.

    Splits: "eval" at the training length, "eval_T{L}" for each extra length L.
    """
    results = {}
    for split, task in [(EVAL, setup.task)] + [(f"eval_T{t.seq_len}", t)
                                              for t in setup.eval_tasks]:
        metrics = jax.device_get(eval_step(setup, task, state.params, state.eval_key))
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        metrics["solved"] = np.asarray(task.solved(metrics))
        results[split] = metrics
    return results


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The run's orbax CheckpointManager in workdir/checkpoints."""
    options = ocp.CheckpointManagerOptions(max_to_keep=config.train.max_checkpoints, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options)


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, step: int) -> None:
    """Saves `state` as checkpoint `step` (asynchronously; committed by an atomic rename)."""
    checkpoint.save(manager, state, step)  # a failure names the intact earlier steps


def restore_checkpoint(manager: ocp.CheckpointManager,
                       target: TrainState) -> Optional[TrainState]:
    """The latest checkpoint restored into `target`'s structure, or None if there is none."""
    return checkpoint.restore_latest(manager, target)[0]  # skips damaged steps, newest first


# ---------------------------------------------------------------------------------------------
# Progress: host syncs, timing and the logged evals.

def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _mean_and_check(pending: list[dict], step: int, seeds: list[int],
                    manager: ocp.CheckpointManager) -> dict[str, np.ndarray]:
    """The host sync: per-seed means of the pending step metrics; stops on a non-finite one."""
    fetched = jax.device_get(pending)
    mean = {k: np.mean([m[k] for m in fetched], axis=0) for k in fetched[0]}
    if "skipped_updates" in mean:  # train.skip_nonfinite: a row counts its skipped updates
        mean["skipped_updates"] = np.sum([m["skipped_updates"] for m in fetched], axis=0)
        bad = mean["skipped_updates"] == len(fetched)  # every update of the window skipped
    else:
        bad = ~(np.isfinite(mean["loss"]) & np.isfinite(mean["grad_norm"]))
    if bad.any():
        raise FloatingPointError(
            f"non-finite loss or gradient by step {step} for seed(s) "
            f"{[s for s, b in zip(seeds, bad) if b]}; last checkpoint: step "
            f"{manager.latest_step()} (nothing non-finite was saved)")
    return mean


class _Clock:
    """Wall time across resumes, and steps/s between logs without compilation, evals and saves."""

    def __init__(self, start_step: int, wall_offset: float):
        self.t0, self.offset = time.time(), wall_offset
        self.mark_time, self.mark_step, self.paused_s = None, start_step, 0.0
        self.rate, self.last_report = float("nan"), 0.0

    def wall(self) -> float:
        return self.offset + time.time() - self.t0

    def first_step(self, step: int, metrics: Any) -> None:
        if self.mark_time is None:
            jax.block_until_ready(metrics)
            self.mark_time, self.mark_step = time.time(), step
            logging.info("First step (with compilation) took %.1f s.", self.mark_time - self.t0)

    def lap(self, step: int) -> float:
        now = time.time()
        if step > self.mark_step:
            self.rate = (step - self.mark_step) / max(now - self.mark_time - self.paused_s, 1e-9)
        self.mark_time, self.mark_step, self.paused_s = now, step, 0.0
        return self.rate

    @contextlib.contextmanager
    def paused(self):
        t = time.time()
        yield
        self.paused_s += time.time() - t

    def report_due(self, every_secs: float) -> bool:
        if time.time() - self.last_report < every_secs:
            return False
        self.last_report = time.time()
        return True


def _log_eval(log: outputs.MetricsLog, setup: Setup, state: TrainState, step: int,
              config: ml_collections.ConfigDict, clock: _Clock) -> bool:
    """Evaluates and logs every split; returns whether every seed is solved at the train length."""
    results = evaluate(setup, state)
    for split, metrics in results.items():
        seq_len = int(split[len("eval_T"):]) if split.startswith("eval_T") else config.seq_len
        log.write(step, split, metrics, seq_len=seq_len, steps_per_sec=clock.rate,
                  wall_time_s=clock.wall())
    return bool(np.all(results[EVAL]["solved"]))


def _solved_at(rows: list[dict], step: int) -> bool:
    """Whether the logged eval at `step` (at the training length) had every seed solved."""
    return any(r["split"] == EVAL and r["step"] == step and all(r["per_seed"]["solved"])
               for r in rows)


# ---------------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains `config.num_seeds` models on the config's task; resumes from workdir if possible.

    Args:
      config: a task config (see experiments/configs).
      workdir: directory for checkpoints, metrics.jsonl, tb/ and result.json.

    Returns:
      The final TrainState (leading seed axis [S]).
    """
    setup = make_setup(config)
    # The devices: a ValueError (e.g. a batch they do not divide) before anything is compiled.
    setup = setup._replace(layout=parallel.make_layout(config))
    logging.info("Devices: %d %s, split over %s.", setup.layout.num_devices,
                 jax.default_backend(), setup.layout.shard.value)
    main = parallel.is_main()  # process 0 alone writes metrics, logs and results
    t = config.train
    seeds = [config.seed + i for i in range(config.num_seeds)]
    checkpoint.check_writable(workdir)  # a clear error before anything is compiled
    if main:  # one process moves and writes the run's files; the others wait for it
        if t.get("fresh_start", False):
            checkpoint.start_fresh(workdir)  # moves the old run to workdir/previous_<k>/
        checkpoint.check_config(workdir, config)  # refuses checkpoints of another config
        checkpoint.remove_uncommitted(os.path.join(workdir, "checkpoints"))
    parallel.barrier("workdir checked")
    if main:
        outputs.atomic_write(os.path.join(workdir, "config.json"),
                             config.to_json_best_effort(indent=2))
    manager = checkpoint_manager(workdir, config)
    state = parallel.to_global(setup.layout,
                               create_train_state(setup, config.seed, config.num_seeds))
    checkpoint.check_free_space(workdir, state, t.max_checkpoints)
    start = 0
    restored = restore_checkpoint(manager, state)
    if restored is not None:
        state, start = restored, int(parallel.fetch(restored.step)[0])
        logging.info("Resuming %s from step %d.", workdir, start)
    log = outputs.MetricsLog(workdir, start, seeds, write_files=main)
    clock = _Clock(start, log.rows[-1]["wall_time_s"] if log.rows else 0.0)
    # Step metrics not yet logged when a signal stopped the run between log steps.
    pending = checkpoint.load_pending(workdir, start) if start else []
    # train.stop_when_solved: the run ends after the first eval at which every seed is solved
    # (`end` is that step); a rerun of a run that stopped so does not train further.
    stop_when_solved = t.get("stop_when_solved", False)
    end = start if start and stop_when_solved and _solved_at(log.rows, start) else t.steps
    stop = checkpoint.StopSignals().install()  # SIGTERM / SIGINT: save this step, then exit
    try:
        for step in range(start + 1, end + 1):
            state, metrics = train_step(setup, state, sample_batch(setup, state))
            parallel.throttle(setup.layout, step, state)
            pending.append(metrics)
            clock.first_step(step, metrics)
            last = step == t.steps
            if step % t.log_every == 0 or step % t.checkpoint_every == 0 or last:
                mean = _mean_and_check(pending, step, seeds, manager)
            if step % t.log_every == 0 or last:
                pending = []
                log.write(step, "train", mean, steps_per_sec=clock.lap(step),
                          wall_time_s=clock.wall())
                if clock.report_due(t.progress_every_secs) or last:
                    logging.info("step %d/%d  loss/baseline %.4f  accuracy %.3f  %.1f steps/s  "
                                 "ETA %s", step, t.steps, np.mean(mean["normalized_loss"]),
                                 np.mean(mean["accuracy"]), clock.rate,
                                 _format_eta((t.steps - step) / clock.rate))
            if step % t.eval_every == 0 or last:
                with clock.paused():
                    solved = _log_eval(log, setup, state, step, config, clock)
                if stop_when_solved and solved and not last:
                    end, last = step, True
                    if pending:  # the train row of the steps since the last log
                        mean = _mean_and_check(pending, step, seeds, manager)
                        pending = []
                        log.write(step, "train", mean, steps_per_sec=clock.lap(step),
                                  wall_time_s=clock.wall())
                    logging.info("step %d: every seed solved; stopping (train.stop_when_solved)",
                                 step)
            if step % t.checkpoint_every == 0 or last:
                with clock.paused():
                    save_checkpoint(manager, state, step)
            if stop.received is not None and not last:
                if pending:
                    _mean_and_check(pending, step, seeds, manager)  # never save a NaN state
                # The pending metrics first: a kill between the two leaves them unused.
                checkpoint.save_pending(workdir, step, pending)
                if step % t.checkpoint_every:
                    save_checkpoint(manager, state, step)
                checkpoint.finish(manager, step)
                raise checkpoint.Stopped(stop.received, step, workdir)
            if last:
                break
        checkpoint.finish(manager, end)
        if not any(r["split"] == EVAL and r["step"] == end for r in log.rows):
            # Resumed from the final checkpoint of a run stopped before its last eval was logged.
            _log_eval(log, setup, state, end, config, clock)
        result = outputs.result(config, setup.task, log.rows, seeds)
        if main:
            outputs.atomic_write(os.path.join(workdir, "result.json"),
                                 json.dumps(result, indent=2) + "\n")
        logging.info("Finished %s: solved %.2f of %d seed(s), eval loss/baseline %s.", workdir,
                     result["solved_fraction"], len(seeds),
                     [round(s["normalized_loss"], 4) for s in result["seeds"]])
    finally:
        stop.uninstall()
        manager.wait_until_finished()
        manager.close()
        log.close()
    return state
