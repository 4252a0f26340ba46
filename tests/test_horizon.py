"""Pins the horizon search (experiments/horizon.py): the lengths it picks (doubling, the cap,
bisection to the resolution), its horizon.json against the points it ran, resuming an
interrupted search, replaying it from the finished points alone, the learning-rate choice, and
one end-to-end search with the real trainer at smoke sizes."""

import json
import os
import subprocess
import sys

import pytest

from experiments import files, horizon, report, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lengths(rule, truth):
    """The lengths a search tries when exactly the lengths <= truth are solved."""
    tried, solved = [], {}
    while (t := horizon.next_length(rule, solved)) is not None:
        tried.append(t)
        solved[t] = t <= truth
    return tried


def test_search_doubles_then_bisects_to_the_resolution():
    rule = horizon.LengthRule(start_len=10, factor=2, resolution=1.25, max_len=1000)
    # 80 solved, 160 failed; sqrt(80*160) = 113 solved; sqrt(113*160) = 134 solved; 160/134 < 1.25.
    assert _lengths(rule, truth=137) == [10, 20, 40, 80, 160, 113, 134]
    assert _lengths(rule, truth=112) == [10, 20, 40, 80, 160, 113, 95]  # 95 solved: 113/95 < 1.25


def test_search_never_exceeds_max_len_and_stops_when_it_is_solved():
    rule = horizon.LengthRule(start_len=10, factor=2, resolution=1.25, max_len=100)
    assert _lengths(rule, truth=10_000) == [10, 20, 40, 80, 100]
    assert _lengths(rule, truth=90) == [10, 20, 40, 80, 100]  # 100/80 <= 1.25: done
    rule = rule._replace(max_len=120)
    assert _lengths(rule, truth=90) == [10, 20, 40, 80, 120, 98]  # 98 fails, 98/80 < 1.25


def test_search_that_fails_at_the_start_shrinks_then_bisects():
    rule = horizon.LengthRule(start_len=50, factor=2, resolution=1.25, max_len=1000)
    # 50, 25, 12 fail; 6 solved; sqrt(6*12) = 8 solved; sqrt(8*12) = 10 solved; 12/10 < 1.25.
    assert _lengths(rule, truth=10) == [50, 25, 12, 6, 8, 10]
    assert _lengths(rule, truth=1) == [50, 25, 12, 6, 3]  # not below min_len = 2


def test_bisection_stops_when_no_integer_lies_between():
    rule = horizon.LengthRule(start_len=2, factor=2, resolution=1.01, max_len=1000)
    assert _lengths(rule, truth=2) == [2, 4, 3]


# --- the search over real workdirs, with a fake trainer --------------------------------------

def _grid(**kw):
    return sweep.resolve_grid("smoke", tasks_=["adding"], cells=["lstm"], inits=["default"],
                              num_seeds=3, **kw)


def _fake_train(truth, calls, fail_at=None):
    """A trainer that 'solves' T <= truth with 2 of 3 seeds, writing a real result.json."""
    def train_fn(config, workdir):
        calls.append(config.seq_len)
        if config.seq_len == fail_at:
            raise RuntimeError("interrupted")
        ok = config.seq_len <= truth
        seeds = [{"seed": i, "loss": 0.1, "normalized_loss": 0.01 if ok else 1.0,
                  "accuracy": 1.0, "solved": ok and i < 2,
                  "steps_to_solve": 20 * (i + 1) if ok and i < 2 else None} for i in range(3)]
        result = {"task": "adding", "seq_len": config.seq_len, "cell": "lstm",
                  "gru_variant": "reset_after", "init": "default", "hidden_size": 16,
                  "num_layers": 1, "baseline": 0.167, "solved_criterion": "x", "steps": 40,
                  "final_step": 40, "stopped": "budget", "num_seeds": 3, "seeds": seeds,
                  "solved_fraction": sum(s["solved"] for s in seeds) / 3, "wall_time_s": 1.0}
        files.atomic_write(os.path.join(workdir, report.RESULT_FILE), json.dumps(result))
    return train_fn


def test_search_entry_matches_its_points_and_replays_from_them(tmp_path):
    grid, root = _grid(), str(tmp_path)
    search = horizon.searches(grid)[0]
    rule = horizon.LengthRule(start_len=10, factor=2, resolution=1.25, max_len=60)
    calls = []
    entry = horizon.horizon_search(grid, search, rule, root, train_fn=_fake_train(50, calls))
    assert calls == [10, 20, 40, 60, 49]  # 60 (capped 80) fails; 49 solved; 60/49 < 1.25
    assert entry["horizon"] == 49 and not entry["lower_bound"] and entry["complete"]
    assert [p["seq_len"] for p in entry["points"]] == [10, 20, 40, 49, 60]
    for p in entry["points"]:
        result = report.read_result(root, search.at(p["seq_len"]).name)
        assert p["solved_fraction"] == result["solved_fraction"]
        assert p["steps_to_solve"] == [s["steps_to_solve"] for s in result["seeds"]]
    assert entry["budget_steps"] == 40 and entry["num_seeds"] == 3
    # Rebuilt from the finished points alone, without training: the same entry.
    assert horizon.horizon_search(grid, search, rule, root, train=False) == entry
    # The sweep's report reads the same root: its horizon agrees.
    rows = report.load_rows(root)
    (h,) = report.horizons(rows).values()
    assert h.seq_len == 49


def test_interrupted_search_resumes_without_rerunning_finished_points(tmp_path):
    grid, root = _grid(), str(tmp_path)
    search = horizon.searches(grid)[0]
    rule = horizon.LengthRule(start_len=10, factor=2, resolution=1.25, max_len=1000)
    calls = []
    partial = horizon.horizon_search(grid, search, rule, root,
                                     train_fn=_fake_train(100, calls, fail_at=160))
    assert calls == [10, 20, 40, 80, 160] and not partial["complete"]
    assert partial["horizon"] == 80 and partial["lower_bound"]
    assert partial["stopped_at"] == {"seq_len": 160, "reason": "failed: RuntimeError: interrupted"}
    calls.clear()
    entry = horizon.horizon_search(grid, search, rule, root, train_fn=_fake_train(100, calls))
    assert calls == [160, 113, 95]  # only the missing points
    assert entry["horizon"] == 95 and entry["complete"] and "stopped_at" not in entry
    assert not os.path.exists(os.path.join(root, search.at(160).name, sweep.FAILURE_FILE))


def test_a_search_stopped_by_a_failed_point_says_where_and_why(tmp_path):
    grid, root = _grid(), str(tmp_path)
    search = horizon.searches(grid)[0]
    rule = horizon.LengthRule(start_len=10, factor=2, resolution=1.25, max_len=1000)
    message = ("non-finite loss or gradient by step 100 for seed(s) [0, 1, 2]; no checkpoint "
               "was saved yet")

    def diverges_at_40(config, workdir):
        if config.seq_len == 40:
            raise FloatingPointError(message)
        _fake_train(100, [])(config, workdir)

    entry = horizon.horizon_search(grid, search, rule, root, train_fn=diverges_at_40)
    assert entry["horizon"] == 20 and not entry["complete"]
    assert entry["stopped_at"] == {"seq_len": 40, "reason": f"failed: FloatingPointError: "
                                                              f"{message}"}
    # The reason is on disk, so a replay from the points alone gives it too.
    assert horizon.horizon_search(grid, search, rule, root, train=False) == entry
    assert ("| >= 20 (incomplete: T = 40 failed: FloatingPointError: non-finite loss or "
            "gradient by step 100 for seed(s) [0, 1, 2]) |") in horizon.horizon_table([entry])
    # A point with no result and no recorded failure is "not finished".
    os.remove(os.path.join(root, search.at(40).name, sweep.FAILURE_FILE))
    replay = horizon.horizon_search(grid, search, rule, root, train=False)
    assert replay["stopped_at"]["seq_len"] == 40
    assert replay["stopped_at"]["reason"].startswith("not finished")


def test_learning_rate_is_chosen_at_the_reference_length(tmp_path):
    grid, root = _grid(), str(tmp_path)
    search = horizon.searches(grid)[0]
    rule = horizon.LengthRule(start_len=10, factor=2, resolution=1.5, max_len=20)
    seen = []

    def train_fn(config, workdir):
        seen.append((config.train.learning_rate, config.seq_len))
        truth = 100 if config.train.learning_rate == 0.003 else 5
        _fake_train(truth, [])(config, workdir)

    entry = horizon.horizon_search(grid, search, rule, root, lrs=[0.001, 0.003],
                                   lr_ref_len=10, train_fn=train_fn)
    # The chosen rate's run at the reference length is the search's first point: not retrained.
    assert seen == [(0.001, 10), (0.003, 10), (0.003, 20)]
    assert entry["learning_rate"] == 0.003 and entry["horizon"] == 20
    assert entry["lr_grid"]["0.001"]["solved_fraction"] == 0
    reference = report.read_result(os.path.join(root, horizon.LR_DIR, "lr0.003"),
                                   search.at(10).name)
    assert report.read_result(root, search.at(10).name) == reference
    rows = report.load_rows(root)
    assert {os.path.dirname(r["workdir"]) for r in rows} == {"adding/lstm-default"}
    assert sorted({r["seq_len"] for r in rows}) == [10, 20]
    # A rerun trains nothing and gives the same entry.
    seen.clear()
    assert horizon.horizon_search(grid, search, rule, root, lrs=[0.001, 0.003],
                                  lr_ref_len=10, train_fn=train_fn) == entry and seen == []


def test_a_reference_length_the_search_never_visits_stays_out_of_its_layout(tmp_path):
    grid, root = _grid(), str(tmp_path)
    search = horizon.searches(grid)[0]
    rule = horizon.LengthRule(start_len=10, factor=2, resolution=1.5, max_len=20)
    calls = []
    entry = horizon.horizon_search(grid, search, rule, root, lrs=[0.001], lr_ref_len=15,
                                   train_fn=_fake_train(100, calls))
    assert calls == [15, 10, 20] and entry["horizon"] == 20
    assert sorted({r["seq_len"] for r in report.load_rows(root)}) == [10, 20]


def test_horizon_file_keeps_the_searches_of_earlier_commands(tmp_path, capsys):
    root = str(tmp_path)
    lstm, gru = ({"task": "adding", "cell": c, "gru_variant": "reset_after", "init": "chrono",
                  "horizon": h} for c, h in (("lstm", 750), ("gru", 1000)))
    horizon.write_horizons(root, [lstm])
    path = horizon.write_horizons(root, [gru])  # e.g. --cells=gru after --cells=lstm
    with open(path) as f:
        assert json.load(f) == [lstm, gru]
    horizon.write_horizons(root, [{**lstm, "horizon": 1000}])  # searched again: replaced in place
    with open(path) as f:
        assert [e["horizon"] for e in json.load(f)] == [1000, 1000]
    with open(path, "w") as f:
        f.write('[{"task": "add')  # damaged by hand: replaced, with a warning naming it
    horizon.write_horizons(root, [gru])
    with open(path) as f:
        assert json.load(f) == [gru]
    assert f"warning: {path}: unreadable" in capsys.readouterr().err


def test_command_line_search_with_the_trainer(tmp_path):
    """Smoke sizes, one search (rnn, adding, T = 3 at most): the trainer runs, horizon.json and
    the report are written, and a rerun trains nothing."""
    root = str(tmp_path / "h")
    cmd = [sys.executable, "-m", "experiments.horizon", "--grid=smoke", f"--root={root}",
           "--tasks=adding", "--cells=rnn", "--inits=default", "--num_seeds=1",
           "--start_len=3", "--max_len=3", "--set=parallel.cpu_devices=1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(os.path.join(root, horizon.HORIZON_FILE)) as f:
        (entry,) = json.load(f)
    tried = [p["seq_len"] for p in entry["points"]]  # ascending
    assert tried[-1] == 3 and entry["complete"]  # solved: at max_len; failed: 2 is tried next
    assert all(p["final_step"] <= entry["budget_steps"] for p in entry["points"])
    assert os.path.exists(os.path.join(root, "summary.md"))
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and ": start (" not in again.stdout
    with open(os.path.join(root, horizon.HORIZON_FILE)) as f:
        assert json.load(f) == [entry]


@pytest.mark.parametrize("flag, named", [("--factor=1", "--factor"),
                                         ("--lr_grid=fast", "--lr_grid"),
                                         ("--aggregate_only", "--root")])
def test_bad_flags_are_refused_in_one_line(tmp_path, flag, named):
    root = tmp_path / ("missing" if flag == "--aggregate_only" else "")
    cmd = [sys.executable, "-m", "experiments.horizon", "--grid=smoke", f"--root={root}", flag]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-1000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {named}")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("recipe", ["tallec", "arjovsky"])
def test_recipes_set_the_papers_training(recipe):
    from experiments.configs import adding, copy  # noqa: PLC0415
    c = copy.get_config(f"{recipe},seq_len=500")
    a = adding.get_config(f"seq_len=750,{recipe}")
    assert (c.train.optimizer, c.train.learning_rate, c.train.rmsprop_decay) == \
        ("rmsprop", 1e-3, 0.9)
    if recipe == "tallec":
        assert (c.train.clip, c.model.hidden_size, c.model.chrono_max_len) == (0, 128, 750)
        assert (a.train.clip, a.model.hidden_size, a.model.chrono_max_len) == (0, 128, 750)
    else:
        assert (c.train.clip, c.model.hidden_size, c.train.batch_size) == (1, 40, 20)
        assert (a.model.hidden_size, a.train.batch_size, a.model.chrono_max_len) == \
            (128, 50, None)


@pytest.mark.parametrize("overrides, t_max", [
    ((), 300),                                                      # 3T/2: fixed-delay copy
    (("task.variable_delay=True",), 200),                           # T: variable delay
    (("task.variable_delay=True", "model.chrono_max_len=250"), 250),  # an explicit value wins
])
def test_recipe_t_max_follows_an_override_of_the_task(overrides, t_max):
    grid = sweep.resolve_grid("horizon", tasks_=["copy"], cells=["lstm"], inits=["chrono"],
                              num_seeds=1, overrides=overrides)
    config = sweep.make_config(grid, sweep.Point("copy", "lstm", "reset_after", "chrono", 200))
    assert config.model.chrono_max_len == t_max


def test_single_run_recipe_t_max_follows_config_flags(tmp_path):
    # get_config("smoke,tallec") sees the smoke length; --config.seq_len=30 comes after it.
    cmd = [sys.executable, "-m", "experiments.main",
           "--config=experiments/configs/adding.py:smoke,tallec", "--config.seq_len=30",
           "--config.train.steps=10", f"--workdir={tmp_path}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model"]["chrono_max_len"] == 30
