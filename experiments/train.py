"""The training loop for every task: `train_and_evaluate(config, workdir)`.

Pieces, each usable alone (tests, notebooks), given `setup = setup.build(config)`:
  create_train_state(setup, seed, S)      S independent models stacked on a leading seed axis
  loss_fn(setup, params, batch)           -> (loss, metrics), one model
  train_step(setup, state, batch)         jitted, vmapped over seeds -> (state, metrics)
  train_step_one(setup, state, batch)     the same for one model (no seed axis)
  sample_batch(setup, state)              jitted: the training batch of step state.step
  eval_step(setup, task, params, key)     jitted: metrics on a fixed eval batch
  evaluate(setup, state)                  every eval split -> {split: Split(seq_len, metrics)}
  checkpoint.save / checkpoint.restore_latest   orbax, in workdir/checkpoints

The jitted steps take the Setup as a static argument: it is hashable by value (see
experiments/setup.py), so equal configs share the compiled steps (a rerun or resume in the same
process compiles nothing new). The key leaves out `setup.run` (seed, steps, intervals), which no
jitted step reads: runs that differ only there share compiled code too.

Seeds: `num_seeds = S` trains S models with `jax.vmap` over a leading axis of the whole state, in
one compiled step. Seed i of a run with base seed s is built from `jax.random.key(s + i)` alone
(init key fold_in(k, 0), data key fold_in(k, 1), eval key fold_in(k, 2)), so it is the same
model as a run with `seed = s + i, num_seeds = 1`.

Data: the batch of step n (n = 0, 1, ...) is `task.sample(fold_in(data_key, n), batch_size)`,
drawn on the device; eval batches come from the eval key and are the same at every evaluation.

Before the loop, with nothing compiled or written yet: the config is validated, the run's
memory estimated from the state's shapes (`resources.check_memory`) and the disk checked; then
the workdir is locked for the whole run (`checkpoint.lock_workdir`: a second process there is
refused). A failed write is a CheckpointError or `files.WriteError`; closing the writers after
an error never masks it.

The loop's phases, one small function each: resume (`_prepare_workdir`, `_resume`), step
(`_step`), log (`_log_train`), evaluate (`_evaluate`), checkpoint (`_checkpoint`, and
`_stop_on_signal` for SIGTERM / SIGINT), finish (`_finish`).

Outputs in the workdir: metrics.jsonl (one JSON row per logged step and split), tb/ (TensorBoard
events with the same curves), checkpoints/ (orbax), config.json, and result.json when the run has
finished; experiments/outputs.py writes all but the checkpoints. Rerunning the same command in the
same workdir resumes from the latest checkpoint and ends bitwise equal to an uninterrupted run
(CPU; tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from experiments import checkpoint
from experiments import files
from experiments import model as model_lib
from experiments import outputs
from experiments import parallel
from experiments import resources
from experiments import setup as setup_lib
from experiments import tasks

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


class Split(NamedTuple):
    """One evaluation split: its sequence length and per-seed metrics {name: [S] numpy}."""

    seq_len: int
    metrics: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# State and steps.

def _compiled(setup: setup_lib.Setup) -> setup_lib.Setup:
    """The jitted steps' static key: the Setup without the loop's options (`run`), which they
    never read, so runs that differ only in seed, steps or intervals share compiled code."""
    return setup._replace(run=None)


def _keyed_without_run(jitted):
    """`jitted(setup, ...)` called with `_compiled(setup)`; keeps jit's `lower`, `clear_cache`
    and `_cache_size` (tests and benchmarks use them)."""
    @functools.wraps(jitted)
    def call(setup, *args):
        return jitted(_compiled(setup), *args)
    call.lower = lambda setup, *args: jitted.lower(_compiled(setup), *args)
    call.clear_cache, call._cache_size = jitted.clear_cache, jitted._cache_size
    return call


def _seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    root = jax.random.key(seed)
    return tuple(jax.random.fold_in(root, i) for i in range(3))


@functools.partial(jax.jit, static_argnums=0)
def _init_one(setup: setup_lib.Setup, seed: jax.Array) -> TrainState:
    init_key, data_key, eval_key = _seed_keys(seed)
    params = model_lib.init(init_key, setup.model)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup_lib.make_optimizer(setup.optimizer).init(params),
                      data_key=jax.random.key_data(data_key),
                      eval_key=jax.random.key_data(eval_key))


def create_train_state(setup: setup_lib.Setup, seed: int, num_seeds: int = 1) -> TrainState:
    """Fresh state of `num_seeds` models, seeds seed .. seed + num_seeds - 1, stacked [S, ...].

    Each seed is initialised on its own (not vmapped), so seed i's params are exactly those of a
    single-seed run with seed + i.
    """
    states = [_init_one(_compiled(setup), jnp.asarray(seed + i, jnp.uint32))
              for i in range(num_seeds)]
    # Committed to the device like a state restored by orbax, so that train_step's compile
    # cache (which keys on commitment) is shared by fresh and resumed runs.
    return jax.device_put(_stack(states), jax.local_devices()[0])


@jax.jit
def _stack(states: list[TrainState]) -> TrainState:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def loss_fn(setup: setup_lib.Setup, params: Any, batch: tasks.Batch) -> tuple[jax.Array, dict]:
    """Loss and metrics of one model on one batch."""
    outputs = model_lib.apply(setup.model, params, batch.inputs)
    return setup.task.loss_and_metrics(outputs, batch)


def train_step_one(setup: setup_lib.Setup, state: TrainState, batch: tasks.Batch,
                   all_reduce=None) -> tuple[TrainState, dict]:
    """One optimizer step of ONE model (no seed axis): the one place gradients are applied.

    all_reduce: data parallelism's mean of (grads, metrics) over the devices' batch slices
    (`parallel.sharded_step`), applied between the backward pass and the update.
    """
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, setup), has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch)
    if all_reduce is not None:
        grads, metrics = all_reduce(grads, metrics)
    updates, opt_state = setup_lib.make_optimizer(setup.optimizer).update(grads, state.opt_state,
                                                                state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    if isinstance(opt_state, optax.ApplyIfFiniteState):  # train.skip_nonfinite
        metrics["skipped_updates"] = 1 - opt_state.last_finite.astype(jnp.int32)
    return state._replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


@_keyed_without_run
@functools.partial(jax.jit, static_argnums=0)
def train_step(setup: setup_lib.Setup, state: TrainState,
               batch: tasks.Batch) -> tuple[TrainState, dict]:
    """One optimizer step of every seed.

    Args:
      setup: the Setup (static).
      state: TrainState with leading seed axis [S].
      batch: Batch with leading seed axis, inputs [S, B, T, I].

    Returns:
      (new state, metrics {name: [S]}): the task's metrics on this batch (before the update)
      and the gradient's global norm.
    """
    step_one = functools.partial(train_step_one, setup)
    if setup.layout is not None:
        return parallel.sharded_step(setup.layout, step_one)(state, batch)
    return jax.vmap(step_one)(state, batch)


def _sample_one(task: tasks.Task, batch_size: int, key_data: jax.Array, index: jax.Array):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), index)
    return task.sample(key, batch_size)


@_keyed_without_run
@functools.partial(jax.jit, static_argnums=0)
def sample_batch(setup: setup_lib.Setup, state: TrainState) -> tasks.Batch:
    """The training batch of step `state.step` of every seed: inputs [S, B, T, I]."""
    sample = functools.partial(_sample_one, setup.task, setup.batch_size)
    batch = jax.vmap(sample)(state.data_key, state.step)
    # Sharded: XLA splits the sampling over the devices (partitionable threefry: same values).
    return batch if setup.layout is None else parallel.constrain_batch(setup.layout, batch)


@_keyed_without_run
@functools.partial(jax.jit, static_argnums=(0, 1))
def eval_step(setup: setup_lib.Setup, task: tasks.Task, params: Any, eval_key: jax.Array) -> dict:
    """Metrics {name: [S]} of every seed on its fixed eval batch of `task`.

    The eval batch is drawn from fold_in(eval_key, task.seq_len), the same at every call.
    """
    def one(params, key_data):
        batch = _sample_one(task, setup.eval_batch_size, key_data, task.seq_len)
        outputs = model_lib.apply(setup.model, params, batch.inputs)
        return task.loss_and_metrics(outputs, batch)[1]
    metrics = jax.vmap(one)(params, eval_key)
    return metrics if setup.layout is None else parallel.replicate(setup.layout, metrics)


def evaluate(setup: setup_lib.Setup, state: TrainState) -> dict[str, Split]:
    """Evaluates every seed: {split: Split(seq_len, {metric: [S] numpy})}, with "solved" [S].

    Splits: "eval" at the training length, "eval_T{L}" for each extra length L.
    """
    results = {}
    for split, task in [(EVAL, setup.task)] + [(f"eval_T{t.seq_len}", t)
                                              for t in setup.eval_tasks]:
        metrics = jax.device_get(eval_step(setup, task, state.params, state.eval_key))
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        metrics["solved"] = np.asarray(task.solved(metrics))
        results[split] = Split(task.seq_len, metrics)
    return results


# ---------------------------------------------------------------------------------------------
# The host sync.

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
        last = manager.latest_step()
        saved = (f"last checkpoint: step {last} (nothing non-finite was saved)" if last is not None
                 else "no checkpoint was saved yet")
        raise FloatingPointError(
            f"non-finite loss or gradient by step {step} for seed(s) "
            f"{[s for s, b in zip(seeds, bad) if b]}; {saved}. To go on: rerun with "
            f"--config.train.skip_nonfinite=True (skips and counts such updates) or a lower "
            f"--config.train.learning_rate, plus --fresh_start (a changed config starts over "
            f"at step 0; this run moves to previous_<k>/); rerunning the same command resumes "
            f"from {'step ' + str(last) if last is not None else 'step 0'} and stops here again")
    return mean


# ---------------------------------------------------------------------------------------------
# The loop, phase by phase.

@dataclasses.dataclass
class _Loop:
    """The moving parts of one run: where it writes, its log and clock, the unlogged metrics."""

    setup: setup_lib.Setup
    workdir: str
    manager: ocp.CheckpointManager
    log: outputs.MetricsLog
    clock: outputs.Clock
    start: int  # the step resumed from (0: a fresh run)
    pending: list[dict]  # step metrics since the last train row


def _prepare_workdir(workdir: str, config_json: str, fresh_start: bool) -> None:
    """Resume, part 1: refuse an unusable workdir or another config's checkpoints; config.json.

    Runs under the workdir's lock; the checks that need no workdir ran before it was taken."""
    checkpoint.check_writable(workdir)  # a clear error before anything is compiled
    if parallel.is_main():  # one process moves and writes the run's files; the others wait
        if fresh_start:
            checkpoint.start_fresh(workdir)  # moves the old run to workdir/previous_<k>/
        checkpoint.check_config(workdir, config_json)  # refuses checkpoints of another config
        checkpoint.remove_uncommitted(os.path.join(workdir, "checkpoints"))
    parallel.barrier("workdir checked")
    if parallel.is_main():
        files.atomic_write(os.path.join(workdir, "config.json"), config_json)


def _resume(setup: setup_lib.Setup, workdir: str) -> tuple[TrainState, _Loop]:
    """Resume, part 2: the latest good checkpoint (or a fresh state), the log up to it."""
    run = setup.run
    manager = checkpoint.manager(workdir, run.max_checkpoints)
    state = parallel.to_global(setup.layout,
                               create_train_state(setup, run.seed, run.num_seeds))
    start = 0
    restored, skipped = checkpoint.restore_latest(manager, state)  # skips damaged steps
    if restored is not None:
        state, start = restored, int(parallel.fetch(restored.step)[0])
        logging.info("Resuming %s from step %d.", workdir, start)
    if skipped and parallel.is_main():
        _keep_discarded_rows(workdir, start)
    log = outputs.MetricsLog(workdir, start, run.seeds, write_files=parallel.is_main())
    clock = outputs.Clock(start, log.rows[-1]["wall_time_s"] if log.rows else 0.0)
    # Step metrics not yet logged when a signal stopped the run between log steps.
    pending = checkpoint.load_pending(workdir, start) if start else []
    return state, _Loop(setup, workdir, manager, log, clock, start, pending)


def _keep_discarded_rows(workdir: str, start: int) -> None:
    """After a fallback past damaged checkpoints, keeps a copy of metrics.jsonl in
    damaged_checkpoints/ before the log drops its rows past `start` (nothing is deleted)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    k = 0
    while os.path.exists(dst := os.path.join(workdir, checkpoint.DAMAGED_DIR,
                                             f"metrics_{k}.jsonl")):
        k += 1
    shutil.copyfile(path, dst)
    logging.warning("Resuming from step %d: metrics.jsonl's rows past it are kept in %s.", start,
                    dst)


def _step(loop: _Loop, state: TrainState, step: int) -> TrainState:
    """Step: one optimizer step of every seed; its metrics wait for the next log."""
    state, metrics = train_step(loop.setup, state, sample_batch(loop.setup, state))
    parallel.throttle(loop.setup.layout, step, state)
    loop.pending.append(metrics)
    loop.clock.first_step(step, metrics)
    return state


def _log_train(loop: _Loop, step: int) -> dict[str, np.ndarray]:
    """Log: the train row (means of the pending step metrics, checked finite)."""
    mean = _mean_and_check(loop.pending, step, loop.setup.run.seeds, loop.manager)
    loop.pending = []
    loop.log.write(step, "train", mean, steps_per_sec=loop.clock.lap(step),
                   wall_time_s=loop.clock.wall())
    return mean


def _report_progress(loop: _Loop, step: int, mean: dict[str, np.ndarray], last: bool) -> None:
    run, clock = loop.setup.run, loop.clock
    if clock.report_due(run.progress_every_secs) or last:
        logging.info("step %d/%d  loss/baseline %.4f  accuracy %.3f  %.1f steps/s  ETA %s",
                     step, run.steps, np.mean(mean["normalized_loss"]), np.mean(mean["accuracy"]),
                     clock.rate, outputs.format_eta((run.steps - step) / clock.rate))


def _evaluate(loop: _Loop, state: TrainState, step: int) -> bool:
    """Evaluate: logs every split; returns whether every seed is solved at the train length."""
    with loop.clock.paused():
        results = evaluate(loop.setup, state)
        for split, (seq_len, metrics) in results.items():
            loop.log.write(step, split, metrics, seq_len=seq_len,
                           steps_per_sec=loop.clock.rate, wall_time_s=loop.clock.wall())
    return bool(np.all(results[EVAL].metrics["solved"]))


def _checkpoint(loop: _Loop, state: TrainState, step: int) -> None:
    """Checkpoint: saves the state (asynchronously), outside the steps/s clock."""
    with loop.clock.paused():
        checkpoint.save(loop.manager, state, step)


def _stop_on_signal(loop: _Loop, state: TrainState, step: int, signum: int) -> None:
    """Checkpoint on SIGTERM / SIGINT: saves this step and its unlogged metrics, then exits."""
    if loop.pending:
        _mean_and_check(loop.pending, step, loop.setup.run.seeds, loop.manager)  # no NaN saved
    # The pending metrics first: a kill between the two leaves them unused.
    checkpoint.save_pending(loop.workdir, step, loop.pending)
    if step % loop.setup.run.checkpoint_every:
        checkpoint.save(loop.manager, state, step)
    checkpoint.wait_for_saves(loop.manager, step)
    raise checkpoint.Stopped(signum, step, loop.workdir)


def _solved_at(rows: list[dict], step: int) -> bool:
    """Whether the logged eval at `step` (at the training length) had every seed solved."""
    return any(r["split"] == EVAL and r["step"] == step and all(r["per_seed"]["solved"])
               for r in rows)


def _finish(loop: _Loop, state: TrainState, end: int, config: dict) -> None:
    """Finish: waits for the saves, logs the final eval if missing, writes result.json."""
    checkpoint.wait_for_saves(loop.manager, end)
    if not any(r["split"] == EVAL and r["step"] == end for r in loop.log.rows):
        # Resumed from the final checkpoint of a run stopped before its last eval was logged.
        _evaluate(loop, state, end)
    seeds = loop.setup.run.seeds
    result = outputs.result(config, loop.setup.task, loop.log.rows, seeds)
    if parallel.is_main():
        files.atomic_write(os.path.join(loop.workdir, "result.json"),
                           json.dumps(result, indent=2) + "\n")
    logging.info("Finished %s: solved %.2f of %d seed(s), eval loss/baseline %s.", loop.workdir,
                 result["solved_fraction"], len(seeds),
                 [round(s["normalized_loss"], 4) for s in result["seeds"]])


def _train(loop: _Loop, state: TrainState, stop: checkpoint.StopSignals) -> tuple[TrainState, int]:
    """Steps from loop.start to the end; returns the final state and the step it ended at."""
    run = loop.setup.run
    # train.stop_when_solved: the run ends after the first eval at which every seed is solved
    # (`end` is that step); a rerun of a run that stopped so does not train further.
    solved_before = loop.start and run.stop_when_solved and _solved_at(loop.log.rows, loop.start)
    end = loop.start if solved_before else run.steps
    for step in range(loop.start + 1, end + 1):
        state = _step(loop, state, step)
        last = step == run.steps
        if step % run.log_every == 0 or last:  # checkpoint steps are log steps (setup checks)
            _report_progress(loop, step, _log_train(loop, step), last)
        if (step % run.eval_every == 0 or last) and _evaluate(loop, state, step) \
                and run.stop_when_solved and not last:
            end, last = step, True
            if loop.pending:  # the train row of the steps since the last log
                _log_train(loop, step)
            logging.info("step %d: every seed solved; stopping (train.stop_when_solved)", step)
        if step % run.checkpoint_every == 0 or last:
            _checkpoint(loop, state, step)
        if stop.received is not None and not last:
            _stop_on_signal(loop, state, step, stop.received)
        if last:
            break
    return state, end


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains `config.num_seeds` models on the config's task; resumes from workdir if possible.

    Args:
      config: a task config (see experiments/configs); validated (ValueError, one line) before
        anything is compiled or written.
      workdir: directory for checkpoints, metrics.jsonl, tb/ and result.json.

    Returns:
      The final TrainState (leading seed axis [S]).
    """
    # The devices too: a ValueError (e.g. a batch they do not divide) before anything is written.
    setup = setup_lib.build(config, with_layout=True)
    # Memory and disk, from the state's shapes: refused before anything is compiled or written.
    shapes = resources.state_shapes(_init_one, setup)
    resources.check_memory(setup, shapes)
    checkpoint.check_free_space(workdir, shapes, setup.run.max_checkpoints)
    logging.info("Config:\n%s", config)
    logging.info("Devices: %d %s, split over %s.", setup.layout.num_devices,
                 jax.default_backend(), setup.layout.partition.value)
    # One process per workdir: the lock is taken before anything in it is read or written.
    with checkpoint.lock_workdir(workdir) if parallel.is_main() else contextlib.nullcontext():
        _prepare_workdir(workdir, config.to_json_best_effort(indent=2), setup.run.fresh_start)
        state, loop = _resume(setup, workdir)
        stop = checkpoint.StopSignals().install()  # SIGTERM / SIGINT: save this step, then exit
        ok = False
        try:
            state, end = _train(loop, state, stop)
            _finish(loop, state, end, config.to_dict())
            ok = True
        finally:
            stop.uninstall()
            _close(loop, raise_errors=ok)
    return state


def _close(loop: _Loop, raise_errors: bool) -> None:
    """Waits for the saves and closes the checkpoint manager and the logs, trying each. After an
    error (`raise_errors=False`) their own errors are only logged, so the first one survives
    (e.g. a full disk's failed save, not the log's failed close that follows it)."""
    first = None
    for what, close in (("waiting for checkpoint saves",
                         lambda: checkpoint.wait_for_saves(loop.manager)),
                        ("closing the checkpoint manager", loop.manager.close),
                        ("closing the logs", loop.log.close)):
        try:
            close()
        except Exception as e:  # noqa: BLE001
            if raise_errors and first is None:
                first = e
            else:
                logging.warning("%s failed too: %s: %s", what, type(e).__name__, e)
    if first is not None:
        raise first
