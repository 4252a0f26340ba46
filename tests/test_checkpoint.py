"""Pins experiments/checkpoint.py against an uninterrupted copy smoke run (checkpoints at steps 20
and 40): a damaged latest checkpoint (truncated files, deleted files, an uncommitted tmp
directory, an interrupted deletion) is reported, moved aside, and the run resumes from the newest
good step and ends bitwise equal; a workdir of another config is refused listing the differing
keys, unless `train.fresh_start`; an unwritable or full workdir is refused before training; a
failed save names the intact earlier checkpoints and the rerun ends bitwise equal. Faults of
issue 14: a second process on a workdir is refused naming the holder's pid; a newest step with
its item folder removed falls back to the previous step keeping metrics.jsonl; a bit flip is
caught by the checksums; a torn last metrics row is dropped, other damaged files are named; a
full disk's first error survives the writers' close; a model too large for memory is refused
before anything is compiled or written."""

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tensorboardX

from experiments import checkpoint, files, outputs, train
from experiments import setup as setup_lib
from tests import helpers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    config = helpers.smoke_config()
    return config, workdir, train.train_and_evaluate(config, workdir)


def _rows(workdir):
    return _rows_of(os.path.join(workdir, "metrics.jsonl"))


def _assert_same_run(workdir, reference):
    config, ref_dir, ref_state = reference
    state = train.train_and_evaluate(config, workdir)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _rows(workdir) == _rows(ref_dir)
    with open(os.path.join(workdir, "result.json")) as f, \
            open(os.path.join(ref_dir, "result.json")) as g:
        assert json.load(f)["seeds"] == json.load(g)["seeds"]


def _files(directory):
    return [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]


def _truncate(directory):
    for path in _files(directory):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _damage(ckpts, kind):
    latest = os.path.join(ckpts, "40")
    if kind == "truncated":
        _truncate(latest)
    elif kind == "data_deleted":
        shutil.rmtree(os.path.join(latest, "default", "ocdbt.process_0"))
    elif kind == "metadata_deleted":
        os.remove(os.path.join(latest, "default", "_METADATA"))
    elif kind == "item_folder_deleted":
        # Issue 14: orbax then inferred a multi-item layout and refused step 20 too.
        for name in os.listdir(latest):
            path = os.path.join(latest, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    elif kind == "uncommitted_tmp":
        # Killed during the save of step 40: only the tmp directory exists, half written.
        os.rename(latest, os.path.join(ckpts, "40.orbax-checkpoint-tmp-1234"))
        _truncate(os.path.join(ckpts, "40.orbax-checkpoint-tmp-1234"))
    elif kind == "both_damaged":
        # Latest truncated, and step 20 left half-deleted by an interrupted cleanup.
        _truncate(latest)
        for path in _files(os.path.join(ckpts, "20"))[::2]:
            os.remove(path)


@pytest.mark.parametrize("kind", ["truncated", "data_deleted", "metadata_deleted",
                                  "item_folder_deleted", "uncommitted_tmp", "both_damaged"])
def test_damaged_latest_falls_back(reference, tmp_path, kind):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    os.remove(os.path.join(workdir, "result.json"))
    ckpts = os.path.join(workdir, "checkpoints")
    _damage(ckpts, kind)

    if kind == "item_folder_deleted":  # through the trainer, as issue 14 reproduced it
        _assert_same_run(workdir, reference)
        damaged = os.path.join(workdir, "damaged_checkpoints")
        assert sorted(os.listdir(damaged)) == ["40_0", "40_0.checksums.json", "metrics_0.jsonl"]
        # The rows past the restored step are kept aside, not deleted.
        assert _rows_of(os.path.join(damaged, "metrics_0.jsonl")) == _rows(reference[1])
        return
    manager = checkpoint.manager(workdir, reference[0].train.max_checkpoints)
    target = train.create_train_state(setup_lib.build(reference[0]), 0)
    restored, skipped = checkpoint.restore_latest(manager, target)
    manager.close()
    if kind == "uncommitted_tmp":  # never listed, never read
        assert skipped == [] and int(restored.step[0]) == 20
    elif kind == "both_damaged":
        assert restored is None and [s.step for s in skipped] == [40, 20]
    else:
        assert [s.step for s in skipped] == [40] and int(restored.step[0]) == 20
    for s in skipped:
        assert s.reason and os.path.isdir(os.path.join(workdir, "damaged_checkpoints",
                                                       f"{s.step}_0"))

    _assert_same_run(workdir, reference)
    assert sorted(n for n in os.listdir(ckpts)) == ["20", "40"]  # tmp removed, 40 saved anew


def _rows_of(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("steps_per_sec", "wall_time_s")} for line in f]


def _flip_a_bit(step_dir):
    """Flips one bit in the middle of the step's largest array data file: orbax restores it
    without an error, with a changed value."""
    data = max((p for p in _files(step_dir) if "/d/" in p), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 4)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0b1000]))


def test_bit_flip_falls_back_by_checksum(reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    _flip_a_bit(os.path.join(workdir, "checkpoints", "40"))
    manager = checkpoint.manager(workdir, reference[0].train.max_checkpoints)
    target = train.create_train_state(setup_lib.build(reference[0]), 0)
    restored, skipped = checkpoint.restore_latest(manager, target)
    manager.close()
    assert [s.step for s in skipped] == [40] and "checksum mismatch" in skipped[0].reason
    assert int(restored.step[0]) == 20
    assert sorted(os.listdir(os.path.join(workdir, "damaged_checkpoints"))) == [
        "40_0", "40_0.checksums.json"]


_HOLD_LOCK = """import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(workdir):
    """A second process holding workdir's lock (as a run there does); kill it to release."""
    os.makedirs(workdir, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK,
                             os.path.join(workdir, ".lock")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def _snapshot(directory):
    out = {}
    for path in sorted(_files(directory)):
        with open(path, "rb") as f:
            out[path] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def test_second_process_on_a_workdir_is_refused(reference, tmp_path, monkeypatch):
    """Issue 14: a second run on a busy workdir used to rewrite it; now it touches nothing."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    holder = hold_lock(workdir)
    try:
        before = _snapshot(workdir)
        monkeypatch.setattr(train, "train_step", lambda *a: pytest.fail("training started"))
        with pytest.raises(checkpoint.WorkdirBusy, match=rf"in use by another process \(pid "
                                                         rf"{holder.pid}, holding "):
            train.train_and_evaluate(helpers.smoke_config(**{"train.learning_rate": 0.01}),
                                     workdir)
        assert _snapshot(workdir) == before
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock, none is left stale
        holder.wait()
    with checkpoint.lock_workdir(workdir):
        with checkpoint.lock_workdir(workdir):  # re-entrant in one process
            with open(os.path.join(workdir, checkpoint.LOCK_FILE)) as f:
                assert f.read() == f"{os.getpid()}\n"


def test_torn_last_metrics_row_is_dropped_other_bad_rows_named(reference, tmp_path):
    """Issue 14: an interrupted write's partial last row blocked every rerun."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        lines = f.readlines()
    with open(path, "a") as f:
        f.write('{"step": 280, "')
    log = outputs.MetricsLog(workdir, 40, [0], write_files=False)
    assert log.rows == [json.loads(line) for line in lines]
    with open(path, "w") as f:
        f.writelines(lines[:2] + ['{"step": 1\n'] + lines[2:])
    with pytest.raises(ValueError, match=rf"^{path}, line 3: not a JSON row .*delete that line"):
        outputs.MetricsLog(workdir, 40, [0], write_files=False)


def test_damaged_config_and_pending_files_are_named(reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    config_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
    with open(config_path, "a") as f:
        f.write("}garbage")
    with pytest.raises(ValueError, match=rf"^{config_path} is damaged .*--fresh_start"):
        checkpoint.check_config(workdir, reference[0].to_json_best_effort(indent=2))
    pending = os.path.join(workdir, checkpoint.PENDING_FILE)
    checkpoint.save_pending(workdir, 25, [{"loss": np.float32(1.0)}])
    with open(pending, "r+b") as f:
        f.truncate(os.path.getsize(pending) // 2)
    with pytest.raises(ValueError, match=rf"^{pending} is damaged .*delete it"):
        checkpoint.load_pending(workdir, 25)


def test_restore_checks_contents(reference, tmp_path):
    """A checkpoint that restores but holds the wrong step or non-finite values is skipped."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    config = reference[0]
    target = train.create_train_state(setup_lib.build(config), 0)
    bad = target._replace(step=target.step + 7,  # stored step 7 in directory 60
                          params=jax.tree.map(lambda x: x * np.nan, target.params))
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as keep_all:
        keep_all.save(60, args=ocp.args.StandardSave(bad._replace(params=target.params)))
        keep_all.save(70, args=ocp.args.StandardSave(bad._replace(step=bad.step + 63)))
        keep_all.wait_until_finished()
    manager = checkpoint.manager(workdir, config.train.max_checkpoints)
    restored, skipped = checkpoint.restore_latest(manager, target)
    manager.close()
    assert [s.step for s in skipped] == [70, 60]
    assert "non-finite" in skipped[0].reason and "stored step [7] != directory step 60" in \
        skipped[1].reason
    assert int(restored.step[0]) == 40


def test_other_config_is_refused_listing_keys(reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    before = sorted(_files(workdir))
    other = helpers.smoke_config(seed=1, **{"train.learning_rate": 0.01})
    with pytest.raises(ValueError, match=r"different config; differing keys: seed: 0 -> 1; "
                                         r"train\.learning_rate: 0\.001 -> 0\.01\. "):
        train.train_and_evaluate(other, workdir)
    assert sorted(_files(workdir)) == before  # nothing written or moved

    # Fields that do not change the numbers may differ.
    checkpoint.check_config(workdir, helpers.smoke_config(
        **{"train.progress_every_secs": 99.0}).to_json_best_effort(indent=2))

    other = helpers.smoke_config(seed=1)
    other.train.fresh_start = True
    train.train_and_evaluate(other, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "previous_0", "checkpoints"))) == [
        "20", "40"]
    with open(os.path.join(workdir, "checkpoint_config.json")) as f:
        assert json.load(f)["seed"] == 1
    assert _rows(os.path.join(workdir, "previous_0")) == _rows(reference[1])


def test_unwritable_workdir_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train_step", lambda *a: pytest.fail("training started"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(checkpoint.WorkdirError, match=r"--workdir=.*file/run.*cannot write"):
        train.train_and_evaluate(helpers.smoke_config(), str(blocker / "run"))


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train_step", lambda *a: pytest.fail("training started"))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    with pytest.raises(checkpoint.WorkdirError, match=r"0\.0 MiB free, the run needs about "):
        train.train_and_evaluate(helpers.smoke_config(), str(tmp_path / "run"))
    assert os.listdir(tmp_path) == []  # checked before anything is written (issue 14)


@pytest.mark.parametrize("overrides", [{"model.hidden_size": 100000}, {"eval.batch_size": 10**8},
                                       {"seq_len": 10**9}])
def test_model_too_large_is_refused_before_compiling(tmp_path, monkeypatch, overrides):
    """Issue 14: hidden_size=100000 (w_h alone 160 GB) sat at 0% CPU for over 10 minutes."""
    monkeypatch.setattr(train, "create_train_state", lambda *a: pytest.fail("initialised"))
    with pytest.raises(ValueError, match=r"^the run needs at least [\d.e+]+ GiB of memory "
                                         r"\(state .* GiB, train step .* GiB, eval step .* GiB\), "
                                         r"more than the [\d.]+ GiB this machine has available"):
        train.train_and_evaluate(helpers.smoke_config(**overrides), str(tmp_path / "run"))
    assert os.listdir(tmp_path) == []


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_save_keeps_earlier_checkpoints(reference, tmp_path, monkeypatch):
    """The disk fills at step 40: the save fails, then so does the TensorBoard writer's close;
    the save's error is the one reported (issue 14: the close's used to mask it)."""
    original = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 40:
            monkeypatch.setattr(tensorboardX.SummaryWriter, "close", _no_space)
            _no_space()
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    workdir = str(tmp_path / "run")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"^disk full: saving checkpoint step 40 .* failed \(OSError: .*No "
                             r"space left.*\); earlier checkpoints \[20\] are intact; free space "
                             r"and rerun the same command"):
        train.train_and_evaluate(reference[0], workdir)
    monkeypatch.undo()
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["20"]
    _assert_same_run(workdir, reference)


def test_full_disk_while_logging_is_one_line_and_resumes(reference, tmp_path, monkeypatch):
    """metrics.jsonl's write fails with ENOSPC at step 30's row: a WriteError naming the file
    (main exits 4 with it); the rerun ends bitwise equal."""
    workdir = str(tmp_path / "run")
    path = os.path.join(workdir, "metrics.jsonl")

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            if '"step": 30,' in text:
                _no_space()
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(outputs, "open", lambda *a: FullFile(open(*a)), raising=False)
    with pytest.raises(files.WriteError) as info:
        train.train_and_evaluate(reference[0], workdir)
    assert str(info.value) == (f"disk full while writing {path}; free space and rerun the same "
                               f"command to resume")
    monkeypatch.undo()
    _assert_same_run(workdir, reference)
