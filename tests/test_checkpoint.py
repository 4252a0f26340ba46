"""Pins experiments/checkpoint.py against an uninterrupted copy smoke run (checkpoints at steps 20
and 40): a damaged latest checkpoint (truncated files, deleted files, an uncommitted tmp
directory, an interrupted deletion) is reported, moved aside, and the run resumes from the newest
good step and ends bitwise equal; a workdir of another config is refused listing the differing
keys, unless `train.fresh_start`; an unwritable or full workdir is refused before training; a
failed save names the intact earlier checkpoints and the rerun ends bitwise equal."""

import errno
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import checkpoint, train
from experiments import setup as setup_lib
from tests import helpers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    config = helpers.smoke_config()
    return config, workdir, train.train_and_evaluate(config, workdir)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("steps_per_sec", "wall_time_s")} for line in f]


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
                                  "uncommitted_tmp", "both_damaged"])
def test_damaged_latest_falls_back(reference, tmp_path, kind):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    os.remove(os.path.join(workdir, "result.json"))
    ckpts = os.path.join(workdir, "checkpoints")
    _damage(ckpts, kind)

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


def test_failed_save_keeps_earlier_checkpoints(reference, tmp_path, monkeypatch):
    original = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    workdir = str(tmp_path / "run")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"step 40 .* failed \(OSError: .*No space left.*\); earlier "
                             r"checkpoints \[20\] are intact"):
        train.train_and_evaluate(reference[0], workdir)
    monkeypatch.setattr(ocp.CheckpointManager, "save", original)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["20"]
    _assert_same_run(workdir, reference)
