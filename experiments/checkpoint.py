"""Checkpoint safety around orbax: one process per workdir, damaged steps, config mismatches,
full disks, signals.

Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and commits it by renaming, so a step
directory is either complete or absent; but its removal of old steps (max_to_keep) is not
atomic, and files can be truncated or deleted afterwards. Hence:

- `lock_workdir` holds an exclusive `fcntl.flock` on `workdir/.lock` for the whole run: a second
  process on the same workdir is refused (WorkdirBusy, naming the holder's pid) before it reads
  or writes anything. The OS releases the lock when the holder dies, even by SIGKILL, so a lock
  is never stale. Re-entrant within a process (a sweep locks a point, then trains it).
- `save` writes `workdir/checksums/<step>.json` (SHA-256 of each array's bytes) before orbax
  starts the step, so every committed step has one.
- `restore_latest` tries the committed steps newest first, catches any error per step, checks
  what it read (structure, shapes, dtypes, the stored step number, finite values, the
  checksums), moves a step it cannot use to `workdir/damaged_checkpoints/` (so the run can save
  that step again) and reports it; it returns the newest restorable state. Uncommitted tmp
  directories are never read. The manager names its one item and handler explicitly
  (`manager`): otherwise orbax infers a multi-item layout from a step whose item folder is
  missing and then fails every older step too.
- `check_config` stores the config the checkpoints were made by (workdir/checkpoint_config.json)
  and refuses to resume under another config, listing the differing keys; `start_fresh` moves a
  previous run's outputs to `workdir/previous_<k>/` (nothing is deleted).
- `check_writable` / `check_free_space` fail before training when the workdir cannot hold the
  run; `save` / `finish` turn a failed save into one clear error that says which earlier
  checkpoints are intact.
- `StopSignals`: SIGTERM / SIGINT set a flag that the loop reads once per step, so it can save
  the current step and exit; a second SIGINT interrupts at once.
- `save_pending` / `load_pending`: the step metrics since the last log row, saved with an
  off-interval checkpoint so that the resumed run logs the same means as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from experiments import files

CONFIG_FILE = "checkpoint_config.json"  # in workdir: the config the checkpoints were made by
PENDING_FILE = "pending_metrics.npz"  # in workdir
DAMAGED_DIR = "damaged_checkpoints"  # in workdir
CHECKSUM_DIR = "checksums"  # in workdir: <step>.json, {array path: SHA-256 of its bytes}
LOCK_FILE = ".lock"  # in workdir: flock-ed by the process running there; holds its pid
TMP_MARKER = ".orbax-checkpoint-tmp"
# Fields that do not change the numbers of a run: they may differ on resume.
HARMLESS_KEYS = ("train.progress_every_secs", "train.max_checkpoints", "train.fresh_start",
                 # Steps up to a stop are the same with or without it; a stopped run continues
                 # when it is turned off.
                 "train.stop_when_solved",
                 # Where a run executes, not what it computes: a run may resume on another
                 # device count or set of hosts (the bits may change, see README).
                 "parallel.num_devices", "parallel.cpu_devices", "distributed.")


def _harmless(key: str) -> bool:
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS_KEYS)
# Outputs of a run that `start_fresh` moves aside.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tb", "result.json", "config.json", PENDING_FILE,
               DAMAGED_DIR, CONFIG_FILE, CHECKSUM_DIR)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class WorkdirError(OSError):
    """The workdir cannot hold the run (not writable, not enough free space)."""


class WorkdirBusy(WorkdirError):
    """Another process holds the workdir's lock (it is running there)."""


class Skipped(NamedTuple):
    """A checkpoint step that could not be restored, and why."""

    step: int
    reason: str


# ---------------------------------------------------------------------------------------------
# Restore.

def _check_restored(restored: Any, target: Any, step: int) -> None:
    """Raises ValueError unless `restored` has target's structure, shapes, dtypes and the step
    number of its directory."""
    got, want = jax.tree.structure(restored), jax.tree.structure(target)
    if got != want:
        raise ValueError(f"structure {got} != expected {want}")
    for path, a, b in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                          jax.tree.leaves(restored), jax.tree.leaves(target)):
        name = jax.tree_util.keystr(path[0])
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"{name}: {a.shape} {a.dtype} != expected {b.shape} {b.dtype}")
    stored = np.asarray(restored.step)
    if not (stored == step).all():
        raise ValueError(f"stored step {stored.tolist()} != directory step {step}")


def _check_finite(restored: Any) -> None:
    """Raises ValueError naming the first array with a NaN or inf (after the checksums: a step
    saved before checksums existed, or damaged where they cannot see, still fails here)."""
    for path, a in jax.tree_util.tree_flatten_with_path(restored)[0]:
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(np.asarray(a)).all():
            raise ValueError(f"{jax.tree_util.keystr(path)}: non-finite values")


def checksums(state: Any) -> Optional[dict[str, str]]:
    """{array path: SHA-256 hex digest of its bytes} of a state; None if some array is not fully
    addressable from this process (multi-host: not checked)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    if not all(getattr(x, "is_fully_addressable", True) for _, x in leaves):
        return None
    arrays = jax.device_get([x for _, x in leaves])
    return {jax.tree_util.keystr(path): hashlib.sha256(np.ascontiguousarray(a).tobytes())
            .hexdigest() for (path, _), a in zip(leaves, arrays)}


def _checksum_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, CHECKSUM_DIR, f"{step}.json")


def _check_checksums(restored: Any, workdir: str, step: int) -> None:
    """ValueError unless each restored array has the SHA-256 recorded when `step` was saved.

    A step without a checksum file (saved before checksums existed) is not checked."""
    path = _checksum_path(workdir, step)
    if not os.path.exists(path):
        logging.info("No checksums for checkpoint step %d (%s): not verified.", step, path)
        return
    with open(path) as f:
        try:
            stored = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is damaged ({e})") from None
    got = checksums(restored)
    if got is None:
        return
    bad = [k for k in got if stored.get(k) != got[k]]
    if bad:
        raise ValueError(f"checksum mismatch (SHA-256 differs from the one saved) in {bad[:3]}")


def _move_aside(directory: str, step: int, workdir: str) -> Optional[str]:
    src = os.path.join(directory, str(step))
    if not os.path.exists(src):
        return None
    dst_root = os.path.join(workdir, DAMAGED_DIR)
    os.makedirs(dst_root, exist_ok=True)
    k = 0
    while os.path.exists(dst := os.path.join(dst_root, f"{step}_{k}")):
        k += 1
    os.rename(src, dst)
    if os.path.exists(sums := _checksum_path(workdir, step)):
        os.rename(sums, os.path.join(dst_root, f"{step}_{k}.checksums.json"))
    return dst


def restore_latest(manager: ocp.CheckpointManager, target: Any,
                   workdir: Optional[str] = None) -> tuple[Optional[Any], list[Skipped]]:
    """The newest checkpoint that restores cleanly into `target`'s structure.

    Args:
      manager: the run's CheckpointManager (`manager(...)`).
      target: a state with the expected structure, shapes and dtypes (e.g. a fresh TrainState,
        or its `jax.eval_shape`).
      workdir: where damaged steps are moved (default: the parent of the checkpoint directory).

    Returns:
      (state or None if no step restored, [Skipped(step, reason)] newest first). Each skipped
      step was moved to workdir/damaged_checkpoints/ and logged as a warning.
    """
    directory = os.fspath(manager.directory)
    workdir = workdir or os.path.dirname(directory)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    skipped = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
            _check_restored(restored, target, step)
            _check_checksums(restored, workdir, step)  # the precise diagnosis first
            _check_finite(restored)
        except Exception as e:  # noqa: BLE001 - any failure means: use an earlier step
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            moved = _move_aside(directory, step, workdir)
            skipped.append(Skipped(step, reason))
            logging.warning("Checkpoint step %d is damaged (%s); moved to %s; trying an earlier "
                            "step.", step, reason, moved)
            # What orbax read from the damaged step (e.g. its item layout) must not carry over.
            manager.reload()
            continue
        if skipped:
            logging.warning("Resumed from step %d after skipping damaged step(s) %s.", step,
                            [s.step for s in skipped])
        return restored, skipped
    if skipped:
        logging.warning("No restorable checkpoint (skipped %s): starting from step 0.",
                        [s.step for s in skipped])
    return None, skipped


def remove_uncommitted(directory: str) -> list[str]:
    """Deletes leftover `*.orbax-checkpoint-tmp-*` directories (saves killed before their
    commit: never restorable, never restored). Returns their names."""
    if not os.path.isdir(directory):
        return []
    names = [n for n in os.listdir(directory) if TMP_MARKER in n]
    for name in names:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    if names:
        logging.info("Removed uncommitted checkpoint directories %s.", names)
    return names


# ---------------------------------------------------------------------------------------------
# Save.

def manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    """The run's orbax CheckpointManager in workdir/checkpoints, keeping the newest max_to_keep
    steps (`train.max_checkpoints`).

    Its one item ("default", a StandardCheckpointHandler) is declared, not inferred from the
    steps on disk: a step missing its item folder would otherwise make orbax infer a multi-item
    layout and refuse every step after it."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(manager: ocp.CheckpointManager, state: Any, step: int) -> None:
    """Records the state's checksums, then starts saving it as `step`; raises CheckpointError if
    either fails.

    The checksums go first (`workdir/checksums/<step>.json`): a step orbax commits always has
    them. Checksums of steps older than the oldest kept one are removed."""
    workdir = os.path.dirname(os.fspath(manager.directory))
    try:
        sums = checksums(state)
        if sums is not None and jax.process_index() == 0:
            os.makedirs(os.path.join(workdir, CHECKSUM_DIR), exist_ok=True)
            files.atomic_write(_checksum_path(workdir, step), json.dumps(sums, indent=0))
        manager.save(step, args=ocp.args.StandardSave(state))
    except Exception as e:  # noqa: BLE001 - orbax raises whatever the filesystem raised
        raise _save_error(manager, step, e) from e
    kept = manager.all_steps()
    if kept and jax.process_index() == 0 and os.path.isdir(os.path.join(workdir, CHECKSUM_DIR)):
        for name in os.listdir(os.path.join(workdir, CHECKSUM_DIR)):
            stem = name.partition(".")[0]
            if stem.isdigit() and int(stem) < min(kept):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(workdir, CHECKSUM_DIR, name))


def wait_for_saves(manager: ocp.CheckpointManager, step: Optional[int] = None) -> None:
    """Waits for pending saves; a failure becomes a CheckpointError naming the intact steps."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        raise _save_error(manager, step, e) from e


def _save_error(manager: ocp.CheckpointManager, step: Optional[int], e: Exception):
    try:
        manager.wait_until_finished()  # earlier saves still in flight commit first
    except Exception:  # noqa: BLE001
        pass
    try:
        manager.reload()
        intact = [s for s in manager.all_steps() if s != step]
    except Exception:  # noqa: BLE001
        intact = "unknown"
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    return CheckpointError(
        f"{'disk full: ' if full else ''}saving checkpoint step {step} in {manager.directory} "
        f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); earlier "
        f"checkpoints {intact} are intact; {'free space and ' if full else ''}rerun the same "
        f"command to resume from the latest of them")


# ---------------------------------------------------------------------------------------------
# Workdir.

_HELD: dict[str, list] = {}  # realpath of a workdir this process locked -> [fd, depth]


@contextlib.contextmanager
def lock_workdir(workdir: str):
    """Holds an exclusive lock on `workdir` (flock on workdir/.lock) for the block.

    Creates the workdir and its .lock file if missing, and writes this process's pid into the
    file once it holds the lock. Re-entrant within one process.

    Raises:
      WorkdirBusy: another process holds it (the message names its pid); nothing was written.
      WorkdirError: the workdir cannot be created.
    """
    key = os.path.realpath(workdir)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path = os.path.join(workdir, LOCK_FILE)
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir!r}: cannot write there ({e.strerror or e}); "
                           f"choose a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = b""
        for _ in range(20):  # the holder writes its pid right after locking
            if holder := os.pread(fd, 32, 0).strip():
                break
            time.sleep(0.01)
        os.close(fd)
        raise WorkdirBusy(
            f"--workdir={workdir!r} is in use by another process (pid "
            f"{holder.decode(errors='replace') or 'unknown'}, holding {path}); wait for it to "
            f"finish or stop it, or use another --workdir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the lock


def check_writable(workdir: str) -> None:
    """Creates `workdir` and writes, syncs and removes a probe file; WorkdirError if it fails."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir!r}: cannot write there ({e.strerror or e}); "
                           f"choose a writable directory") from None


def state_nbytes(state: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def check_free_space(workdir: str, state: Any, max_checkpoints: int) -> None:
    """WorkdirError unless the disk has room for max_checkpoints + 1 copies of `state` (+ 16 MiB
    of metrics and metadata). Writes nothing: a workdir not created yet is measured on the
    nearest existing parent directory.

    Args:
      state: the run's state, or its shapes (`jax.eval_shape`).
    """
    need = (max_checkpoints + 1) * state_nbytes(state) + (16 << 20)
    where = os.path.abspath(workdir)
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    if free < need:
        raise WorkdirError(f"--workdir={workdir!r}: {free / 2**20:.1f} MiB free, the run needs "
                           f"about {need / 2**20:.1f} MiB for its checkpoints; free some space")


# ---------------------------------------------------------------------------------------------
# Config fingerprint.

def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (a config as plain data) -> {"dotted.key": leaf value}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def differing_keys(old: dict, new: dict, *, shared_only: bool = False) -> list[str]:
    """The dotted keys whose values differ between two configs as plain data, sorted.

    Args:
      old, new: nested dicts (e.g. `ConfigDict.to_dict()` or a stored JSON config).
      shared_only: a key present on one side only is not a difference (it has no value to
        disagree on: a field the code added or removed since); otherwise it is.
    """
    a, b = flatten(old), flatten(new)
    keys = set(a) & set(b) if shared_only else set(a) | set(b)
    missing = object()
    return [k for k in sorted(keys) if a.get(k, missing) != b.get(k, missing)]


def config_differences(stored: dict, config_json: str) -> list[str]:
    """`key: stored -> new` for each field that differs (ignoring HARMLESS_KEYS).

    Args:
      stored: the config the checkpoints were made by (checkpoint_config.json).
      config_json: the run's config as JSON text (`ConfigDict.to_json_best_effort()`); through
        JSON so that tuples and lists, ints and their JSON round trip compare equal.
    """
    new = json.loads(config_json)
    old_flat, new_flat = flatten(stored), flatten(new)
    return [f"{k}: {old_flat.get(k, '<absent>')!r} -> {new_flat.get(k, '<absent>')!r}"
            for k in differing_keys(stored, new) if not _harmless(k)]


def check_config(workdir: str, config_json: str) -> None:
    """Refuses (ValueError) to resume checkpoints made by another config; records the config.

    Without committed checkpoints there is nothing to resume and the config is (re)recorded.

    Args:
      workdir: the run's workdir.
      config_json: the run's config as JSON text (`ConfigDict.to_json_best_effort(indent=2)`).
    """
    directory = os.path.join(workdir, "checkpoints")
    path = os.path.join(workdir, CONFIG_FILE)
    has_steps = os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))
    if has_steps and os.path.exists(path):
        with open(path) as f:
            try:
                stored = json.load(f)
            except ValueError as e:
                raise ValueError(
                    f"{path} is damaged ({e}); it records the config the checkpoints were made "
                    f"by: restore it (config.json next to it holds the last run's config), or "
                    f"rerun with --fresh_start to start over (the old run is moved to "
                    f"{workdir}/previous_<k>/)") from None
        diffs = config_differences(stored, config_json)
        if diffs:
            raise ValueError(
                f"--workdir={workdir!r} holds checkpoints of a different config; differing keys: "
                f"{'; '.join(diffs)}. Use the original config to resume, another --workdir, or "
                f"--config.train.fresh_start=True (or --fresh_start) to start over (the old run "
                f"is moved to {workdir}/previous_<k>/)")
        return
    files.atomic_write(path, config_json)


def start_fresh(workdir: str) -> Optional[str]:
    """Moves a previous run's outputs to workdir/previous_<k>/ (deleting nothing).

    Returns the directory they went to, or None if there was nothing to move."""
    present = [n for n in RUN_OUTPUTS if os.path.exists(os.path.join(workdir, n))]
    if not present:
        return None
    k = 0
    while os.path.exists(dst := os.path.join(workdir, f"previous_{k}")):
        k += 1
    os.makedirs(dst)
    for name in present:
        os.rename(os.path.join(workdir, name), os.path.join(dst, name))
    logging.warning("Fresh start: moved %s to %s.", present, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Pending step metrics (for a checkpoint taken between log steps).

def save_pending(workdir: str, step: int, pending: list[dict]) -> None:
    """Stores the step metrics not yet logged at `step` (atomically)."""
    fetched = jax.device_get(pending)
    arrays = {f"{i}/{k}": np.asarray(v) for i, m in enumerate(fetched) for k, v in m.items()}
    buf = io.BytesIO()
    np.savez(buf, step=np.int64(step), count=np.int64(len(fetched)), **arrays)
    files.atomic_write(os.path.join(workdir, PENDING_FILE), buf.getvalue())


def load_pending(workdir: str, step: int) -> list[dict]:
    """The step metrics saved with checkpoint `step`, or [] if none were (or for another step)."""
    path = os.path.join(workdir, PENDING_FILE)
    if not os.path.exists(path):
        return []
    try:
        with np.load(path, allow_pickle=False) as f:
            if int(f["step"]) != step:
                return []
            rows = [{} for _ in range(int(f["count"]))]
            for name in f.files:
                if "/" in name:
                    i, key = name.split("/", 1)
                    rows[int(i)][key] = f[name]
    except Exception as e:  # noqa: BLE001 - a damaged npz raises zipfile/OS/Value/Key errors
        raise ValueError(
            f"{path} is damaged ({type(e).__name__}: {e}); it holds the step metrics of the "
            f"unlogged steps before checkpoint step {step}: delete it to resume anyway (the "
            f"next train row then averages fewer steps), or rerun with --fresh_start") from None
    return rows


# ---------------------------------------------------------------------------------------------
# Signals.

class StopSignals:
    """Context manager: SIGTERM / SIGINT set `.received` (the signal number) instead of killing.

    The training loop reads `.received` after each step, saves and exits. A second SIGINT while
    the first is being handled raises KeyboardInterrupt at once. Outside the main thread (where
    Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: Optional[int] = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        logging.warning("Received %s: saving a checkpoint at the current step, then exiting.",
                        signal.Signals(signum).name)

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


class Stopped(SystemExit):
    """Raised after a signal-triggered save: exits the process with code 128 + signal."""

    def __init__(self, signum: int, step: int, workdir: str):
        self.signum, self.step = signum, step
        self.message = (f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint "
                        f"saved in {workdir}; rerun the same command to resume")
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return self.message
