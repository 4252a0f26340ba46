"""Pins the memory-horizon report: the majority rule on a hand-made results set, results.csv
rows against the result.json files they come from, and that every report file is written
(PNG files that decode, the curves read from metrics.jsonl).
"""

import csv
import json
import os

import numpy as np
import pytest

from experiments import report

# (cell, init, T) -> solved flag per seed; hand-made to cover the rule's cases.
_SOLVED = {
    ("lstm", "default", 10): [True, True, True],
    ("lstm", "default", 20): [True, True, False],     # 2/3: a majority -> horizon 20
    ("lstm", "default", 40): [True, False, False],    # 1/3: not a majority
    ("gru", "default", 10): [True, False],            # 1/2: a tie is not a majority -> none
    ("gru", "default", 20): [False, False],
    ("lstm", "chrono", 10): [True, True, True],
    ("lstm", "chrono", 20): [True, True, True],
    ("lstm", "chrono", 40): [True, True, False],      # largest tested T solved -> ">= 40"
    ("rnn", "default", 10): [False, False, False],
    ("rnn", "default", 20): [True, True, False],      # solved at 20 though not at 10 -> 20
    ("rnn", "default", 40): [False, False, False],
}


def _write_run(root, cell, init, seq_len, solved, *, task="copy", hidden_size=8, curve=True):
    workdir = os.path.join(root, task, f"{cell}-{init}-H{hidden_size}", f"T{seq_len}")
    os.makedirs(workdir)
    seeds = [{"seed": 10 + i, "loss": 0.1 * (i + 1), "normalized_loss": 0.2 * (i + 1),
              "accuracy": 1.0 if s else 0.5, "solved": s, "steps_to_solve": 50 if s else None}
             for i, s in enumerate(solved)]
    result = {"task": task, "seq_len": seq_len, "cell": cell, "gru_variant": "reset_after",
              "init": init, "hidden_size": hidden_size, "num_layers": 1, "baseline": 0.5,
              "solved_criterion": "accuracy >= 0.99", "steps": 100, "num_seeds": len(solved),
              "seeds": seeds, "solved_fraction": float(np.mean(solved)), "wall_time_s": 3.0,
              "config": {}}
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f)
    if curve:
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for step in (0, 50, 100):
                losses = [0.5 / (1 + step * (i + 1) / 50) for i in range(len(solved))]
                for split in ("train", "eval"):
                    f.write(json.dumps({"step": step, "split": split, "loss": np.mean(losses),
                                        "normalized_loss": np.mean(losses) / 0.5,
                                        "per_seed": {"loss": losses}}) + "\n")
    return workdir


@pytest.fixture
def root(tmp_path):
    for (cell, init, t), solved in _SOLVED.items():
        _write_run(str(tmp_path), cell, init, t, solved)
    return str(tmp_path)


def test_horizon_majority_rule(root):
    hs = report.horizons(report.load_rows(root))
    got = {(s.cell, s.init): (h.seq_len, h.at_largest, h.text()) for s, h in hs.items()}
    assert got == {("lstm", "default"): (20, False, "20"),
                   ("gru", "default"): (None, False, "none"),
                   ("lstm", "chrono"): (40, True, ">= 40"),
                   ("rnn", "default"): (20, False, "20")}
    lstm = next(h for s, h in hs.items() if (s.cell, s.init) == ("lstm", "default"))
    assert lstm.solved == {10: (3, 3), 20: (2, 3), 40: (1, 3)}


def test_results_csv_matches_result_files(root):
    rows = report.load_rows(root)
    assert len(rows) == sum(len(v) for v in _SOLVED.values())
    text = report.results_csv(rows)
    parsed = list(csv.DictReader(text.splitlines()))
    assert tuple(parsed[0]) == report.CSV_FIELDS
    for line in parsed:
        with open(os.path.join(root, line["workdir"], "result.json")) as f:
            result = json.load(f)
        seed = next(s for s in result["seeds"] if s["seed"] == int(line["seed"]))
        assert (line["task"], line["cell"], line["init"], int(line["seq_len"])) == (
            result["task"], result["cell"], result["init"], result["seq_len"])
        assert float(line["normalized_loss"]) == seed["normalized_loss"]
        assert (line["solved"] == "True") == seed["solved"]
        assert line["steps_to_solve"] == ("" if seed["steps_to_solve"] is None else "50")
        assert line["gru_variant"] == ("reset_after" if line["cell"] == "gru" else "")


def test_summary_numbers(root):
    text = report.summary_markdown(report.load_rows(root), root)
    assert "| copy | lstm/default | 8 | 20 | 10: 3/3, 20: 2/3, 40: 1/3 |" in text
    assert "| copy | gru/default | 8 | none |" in text
    # Per-T line: normalized losses 0.2, 0.4, 0.6 -> mean 0.4, population std 0.163.
    assert ("| copy | lstm/default | 8 | 20 | 100 | budget | 2/3 | 0.4 ± 0.16 | 0.833 ± 0.24 "
            "| 50, 50 | 3 |") in text


def test_read_curve_prefers_eval_rows_and_normalizes_per_seed(root):
    steps, values = report.read_curve(root, os.path.join("copy", "lstm-default-H8", "T10"), 0.5)
    np.testing.assert_array_equal(steps, [0, 50, 100])
    np.testing.assert_allclose(values[:, 2], [1.0, 1 / 4, 1 / 7])
    empty_steps, _ = report.read_curve(root, "missing", 0.5)
    assert empty_steps.size == 0


def test_write_report_writes_every_file(root, capsys):
    # A second hidden size for one cell: the plots must still draw (labels then carry H).
    _write_run(root, "lstm", "default", 10, [True], task="adding", hidden_size=16, curve=False)
    _write_run(root, "lstm", "default", 10, [False], task="adding", hidden_size=32)
    out = report.write_report(root)
    assert set(out.paths) == {"results.csv", "summary.md", *report.PLOT_FILES}
    for name, path in out.paths.items():
        assert os.path.getsize(path) > 0, name
        if name.endswith(".png"):
            with open(path, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert not [f for f in os.listdir(root) if ".tmp" in f]
    report.print_report(out)
    printed = capsys.readouterr().out
    assert "| adding | lstm/default | 32 | none |" in printed and "horizon.png" in printed


def test_empty_root_raises(tmp_path):
    with pytest.raises(ValueError, match="no finished run"):
        report.write_report(str(tmp_path))


def test_runs_that_stopped_when_solved_are_told_from_budget_runs(tmp_path):
    """A result.json with stopped="solved" reads as "solved at <final_step>"; one written before
    train.stop_when_solved existed (no such keys) as "budget"; results.csv carries both."""
    stopped = _write_run(str(tmp_path), "lstm", "chrono", 10, [True, True], curve=False)
    _write_run(str(tmp_path), "lstm", "chrono", 20, [True, False], curve=False)
    path = os.path.join(stopped, "result.json")
    with open(path) as f:
        result = json.load(f)
    with open(path, "w") as f:
        json.dump(dict(result, final_step=60, stopped="solved"), f)
    rows = report.load_rows(str(tmp_path))
    assert [(r["seq_len"], r["stopped"], r["final_step"]) for r in rows] == [
        (10, "solved", 60), (10, "solved", 60), (20, "budget", 100), (20, "budget", 100)]
    text = report.summary_markdown(rows, str(tmp_path))
    assert "| copy | lstm/chrono | 8 | 10 | 100 | solved at 60 | 2/2 |" in text
    assert "| copy | lstm/chrono | 8 | 20 | 100 | budget | 1/2 |" in text
    lines = list(csv.DictReader(report.results_csv(rows).splitlines()))
    assert [line["stopped"] for line in lines] == ["solved", "solved", "budget", "budget"]
