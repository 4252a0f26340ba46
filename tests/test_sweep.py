"""Pins the sweep machinery: grids -> points -> configs, skipping finished points, resuming
interrupted ones, refusing a changed config, and sharded runs aggregating to the same report as
one run; issue 14: a point another process holds is skipped, an invalid `--set` records nothing,
a damaged sweep_point.json is named, and refusals and signals are one line. Training is a fake
(a deterministic function of the config that writes the trainer's files); one real smoke-size
point runs end to end in tests/test_probe.py.
"""

import json
import os
import signal

import pytest

from experiments import checkpoint, report, sweep
from tests.test_checkpoint import hold_lock

# The fake's "true" horizons: a point is solved by seed i when T <= horizon + 10 * (i % 2).
_HORIZON = {"rnn": 10, "lstm": 40, "gru": 20}


def fake_train(calls):
    """A stand-in for `train.train_and_evaluate` writing metrics.jsonl and result.json."""

    def train_fn(config, workdir):
        calls.append(workdir)
        seeds, curves = [], []
        for i in range(config.num_seeds):
            solved = config.seq_len <= _HORIZON[config.model.cell] + 10 * (i % 2)
            loss = 0.001 * (i + 1) if solved else 1.0 + 0.01 * i
            seeds.append({"seed": config.seed + i, "loss": loss * 0.5, "normalized_loss": loss,
                          "accuracy": 1.0 if solved else 0.125, "solved": solved,
                          "steps_to_solve": 100 * (i + 1) if solved else None})
            curves.append([1.0, loss])
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for n, step in enumerate((0, config.train.steps)):
                per_seed = [c[n] * 0.5 for c in curves]
                f.write(json.dumps({"step": step, "split": "eval", "loss": sum(per_seed),
                                    "normalized_loss": sum(c[n] for c in curves) / len(curves),
                                    "per_seed": {"loss": per_seed}}) + "\n")
        result = {"task": config.task.name, "seq_len": config.seq_len,
                  "cell": config.model.cell, "gru_variant": config.model.gru_variant,
                  "init": config.model.init, "hidden_size": config.model.hidden_size,
                  "num_layers": 1, "baseline": 0.5, "solved_criterion": "fake: T <= horizon",
                  "steps": config.train.steps, "num_seeds": config.num_seeds, "seeds": seeds,
                  "solved_fraction": sum(s["solved"] for s in seeds) / len(seeds),
                  "wall_time_s": 1.0, "config": config.to_dict()}
        with open(os.path.join(workdir, "result.json"), "w") as f:
            json.dump(result, f)

    return train_fn


def _grid(**kwargs):
    args = dict(tasks_=["copy"], cells=["rnn", "lstm", "gru"], inits=["default"],
                seq_lens=[10, 20, 40], num_seeds=3, steps=7)
    args.update(kwargs)
    return sweep.resolve_grid("demo", **args)


def test_points_names_and_configs():
    grid = sweep.resolve_grid("demo", tasks_=["copy", "adding"], cells=["rnn", "lstm", "gru"],
                              inits=["default", "forget_bias"], gru_variants=["reset_before"],
                              seq_lens=[10, 30], steps=123, num_seeds=2,
                              overrides=["model.hidden_size=8", "train.optimizer=adam"])
    points = sweep.grid_points(grid)
    names = [p.name for p in points]
    # rnn/forget_bias would repeat rnn/default, so it runs once, as rnn/default.
    assert len(points) == 2 * (1 + 2 + 2) * 2
    assert names[:3] == ["copy/rnn-default/T10", "copy/rnn-default/T30",
                         "copy/lstm-default/T10"]
    assert "adding/gru_reset_before-forget_bias/T30" in names
    assert not any("rnn-forget_bias" in n for n in names)
    only_fb = sweep.grid_points(_grid(inits=["forget_bias"], seq_lens=[10]))
    assert [p.name for p in only_fb] == ["copy/rnn-default/T10", "copy/lstm-forget_bias/T10",
                                         "copy/gru-forget_bias/T10"]
    point = sweep.Point("adding", "gru", "reset_before", "forget_bias", 30)
    config = sweep.make_config(grid, point)
    assert (config.task.name, config.seq_len, config.model.cell, config.model.gru_variant,
            config.model.init) == ("adding", 30, "gru", "reset_before", "forget_bias")
    assert (config.num_seeds, config.train.steps, config.model.hidden_size,
            config.train.optimizer) == (2, 123, 8, "adam")
    # The grid's own per-task values survive where not overridden.
    demo = sweep.resolve_grid("demo")
    config = sweep.make_config(demo, sweep.grid_points(demo)[0])
    wanted = dict(demo["tasks"][config.task.name]["config"])
    for field, value in wanted.items():
        section, name = field.split(".")
        assert config[section][name] == value


@pytest.mark.parametrize("kwargs, match", [
    (dict(cells=["lstm", "transformer"]), "--cells.*transformer"),
    (dict(inits=["xavier"]), "--inits.*xavier"),
    (dict(tasks_=["parity"]), "--tasks.*parity"),
    (dict(seq_lens=[0]), "--seq_lens"),
    (dict(overrides=["model.hidden_size"]), "--set"),
])
def test_bad_grid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _grid(**kwargs)


def test_unknown_grid_and_config_field_raise():
    with pytest.raises(ValueError, match="--grid.*nope"):
        sweep.resolve_grid("nope")
    grid = _grid(overrides=["model.hidden_sise=8"])
    with pytest.raises(ValueError, match="model.hidden_sise.*hidden_size"):
        sweep.make_config(grid, sweep.grid_points(grid)[0])
    grid = _grid(overrides=["model.hidden_size=big"])
    with pytest.raises(ValueError, match="model.hidden_size.*big"):
        sweep.make_config(grid, sweep.grid_points(grid)[0])


def test_shards_partition_the_grid_and_read_slurm():
    points = sweep.grid_points(_grid())
    shards = [sweep.shard(points, i, 4) for i in range(4)]
    assert sorted(p for s in shards for p in s) == sorted(points)
    assert shards[1] == [points[1], points[5]]
    assert sweep.shard_from_env(None, None, {}) == (0, 1)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert sweep.shard_from_env(None, None, env) == (2, 3)
    assert sweep.shard_from_env(0, 2, env) == (0, 2)
    with pytest.raises(ValueError, match="shard"):
        sweep.shard(points, 4, 4)


def test_finished_points_are_skipped_and_interrupted_ones_rerun(tmp_path):
    grid = _grid()
    points = sweep.grid_points(grid)
    calls = []
    outcome = sweep.run_points(grid, points, str(tmp_path), train_fn=fake_train(calls))
    assert len(calls) == len(points) == len(outcome.ran) == 9
    # An interrupted point: its workdir exists (config recorded) but result.json does not.
    interrupted = os.path.join(tmp_path, points[4].name)
    os.remove(os.path.join(interrupted, "result.json"))
    calls.clear()
    outcome = sweep.run_points(grid, points, str(tmp_path), train_fn=fake_train(calls))
    assert calls == [interrupted]
    assert outcome.ran == [points[4].name] and len(outcome.skipped) == 8


def test_a_failing_point_does_not_stop_the_sweep(tmp_path):
    grid = _grid(seq_lens=[10])
    calls, inner = [], fake_train([])

    def train_fn(config, workdir):
        calls.append(workdir)
        if config.model.cell == "lstm":
            raise FloatingPointError("NaN at step 3")
        inner(config, workdir)

    outcome = sweep.run_points(grid, sweep.grid_points(grid), str(tmp_path), train_fn=train_fn)
    assert len(calls) == 3
    assert outcome.failed == ["copy/lstm-default/T10"] and len(outcome.ran) == 2


def test_a_changed_config_is_refused(tmp_path):
    grid = _grid(seq_lens=[10], cells=["lstm"])
    sweep.run_points(grid, sweep.grid_points(grid), str(tmp_path), train_fn=fake_train([]))
    changed = _grid(seq_lens=[10], cells=["lstm"], steps=8)
    with pytest.raises(ValueError, match=r"another config.*\['train.steps'\]"):
        sweep.run_points(changed, sweep.grid_points(changed), str(tmp_path),
                         train_fn=fake_train([]))
    # A field the code added since (absent from the record) is no difference.
    path = os.path.join(tmp_path, "copy", "lstm-default", "T10", sweep.POINT_FILE)
    with open(path) as f:
        record = json.load(f)
    del record["config"]["train"]["clip"]
    with open(path, "w") as f:
        json.dump(record, f)
    outcome = sweep.run_points(grid, sweep.grid_points(grid), str(tmp_path),
                               train_fn=fake_train([]))
    assert outcome.skipped == ["copy/lstm-default/T10"]


def test_sharded_runs_aggregate_to_the_same_report(tmp_path):
    grid = _grid()
    points = sweep.grid_points(grid)
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    sweep.run_points(grid, points, one, train_fn=fake_train([]))
    for i in (2, 0, 1):  # any order
        sweep.run_points(grid, sweep.shard(points, i, 3), many, train_fn=fake_train([]))
    a, b = report.write_report(one), report.write_report(many)
    assert a.table == b.table
    for name in ("results.csv", "summary.md"):
        with open(a.paths[name]) as fa, open(b.paths[name]) as fb:
            assert fa.read() == fb.read(), name
    # The fake's horizons, through the majority rule (2 of 3 seeds have horizon h, 1 has h+10).
    hs = {s.cell: h.text() for s, h in report.horizons(report.load_rows(many)).items()}
    assert hs == {"rnn": "10", "lstm": ">= 40", "gru": "20"}


def test_finish_writes_the_report_and_checks_probe_points(tmp_path, capsys):
    grid = _grid(seq_lens=[10])
    sweep.run_points(grid, sweep.grid_points(grid), str(tmp_path), train_fn=fake_train([]))
    sweep.finish(str(tmp_path), ["copy:99", "none"])
    out = capsys.readouterr().out
    assert "| copy | lstm/default | 128 | >= 10 | 10: 3/3 |" in out
    assert "horizon.png" in out and "probe skipped" in out and "seq_len=99" in out
    with pytest.raises(ValueError, match="--probe.*TASK:T"):
        sweep.finish(str(tmp_path), ["copy"])


def test_a_point_another_process_holds_is_skipped(tmp_path):
    """Issue 14: two sweeps on one root both trained every point."""
    grid = _grid(seq_lens=[10])
    points = sweep.grid_points(grid)
    held = os.path.join(tmp_path, points[1].name)
    holder = hold_lock(held)
    try:
        calls = []
        outcome = sweep.run_points(grid, points, str(tmp_path), train_fn=fake_train(calls))
    finally:
        holder.kill()
        holder.wait()
    assert held not in calls and len(calls) == 2
    assert outcome.skipped == [points[1].name] and len(outcome.ran) == 2
    assert os.listdir(held) == [checkpoint.LOCK_FILE]  # nothing recorded there
    outcome = sweep.run_points(grid, points, str(tmp_path), train_fn=fake_train(calls))
    assert outcome.ran == [points[1].name]


def test_an_invalid_set_records_nothing(tmp_path):
    """Issue 14: the bad value was recorded first, so the corrected command was refused."""
    bad = _grid(seq_lens=[10], cells=["lstm"], overrides=["train.learning_rate=-1.0"])
    with pytest.raises(ValueError, match=r"^--config\.train\.learning_rate: expected > 0"):
        sweep.run_points(bad, sweep.grid_points(bad), str(tmp_path), train_fn=fake_train([]))
    assert not any(name == sweep.POINT_FILE for _, _, names in os.walk(tmp_path)
                   for name in names)
    good = _grid(seq_lens=[10], cells=["lstm"], overrides=["train.learning_rate=0.01"])
    outcome = sweep.run_points(good, sweep.grid_points(good), str(tmp_path),
                               train_fn=fake_train([]))
    assert outcome.ran == ["copy/lstm-default/T10"]


def test_a_damaged_point_record_is_named(tmp_path):
    grid = _grid(seq_lens=[10], cells=["lstm"])
    sweep.run_points(grid, sweep.grid_points(grid), str(tmp_path), train_fn=fake_train([]))
    path = os.path.join(tmp_path, "copy", "lstm-default", "T10", sweep.POINT_FILE)
    with open(path, "r+") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match=rf"^{path} is damaged .*delete it"):
        sweep.run_points(grid, sweep.grid_points(grid), str(tmp_path), train_fn=fake_train([]))


@pytest.mark.parametrize("error, code, line", [
    (checkpoint.Stopped(signal.SIGTERM, 7, "R/copy/lstm-default/T10"), 143,
     "error: stopped by SIGTERM at step 7: checkpoint saved in R/copy/lstm-default/T10; rerun "
     "the same command to resume"),
    (ValueError("R/x: this point was started with another config (differs in ['a'])\nmore"), 2,
     "error: R/x: this point was started with another config (differs in ['a']) more")])
def test_command_line_errors_are_one_line(capsys, error, code, line):
    with pytest.raises(SystemExit) as info:
        with sweep.one_line_errors():
            raise error
    assert info.value.code == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_signal_outside_training_is_one_line_and_not_a_failed_point(tmp_path, capsys):
    """SIGTERM before a point's trainer installed its handlers (e.g. while it starts up)."""
    grid = _grid(seq_lens=[10])
    calls = []

    def terminated(config, workdir):
        calls.append(workdir)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        with sweep.one_line_errors():
            sweep.run_points(grid, sweep.grid_points(grid), str(tmp_path), train_fn=terminated)
    assert info.value.code == 143 and len(calls) == 1  # the sweep stopped at once
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: stopped by SIGTERM between training steps (nothing to save); rerun the same "
        "command to resume")
    assert signal.getsignal(signal.SIGTERM) == before
