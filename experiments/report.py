"""The memory-horizon report: every `result.json` under a sweep root -> table, summary, plots.

A sweep root holds one workdir per grid point (see `experiments/sweep.py`); a workdir is
finished when `experiments/train.py` has written its `result.json`. The report reads only those
files (and each finished workdir's `metrics.jsonl` for the learning curves), so the report made
after sharded runs is the same as the one made after a single run.

Outputs, written into the root (each with `files.atomic_write`):
- `results.csv`: one row per run and seed.
- `summary.md`: the memory-horizon table and the per-`T` numbers behind it.
- `loss_vs_len.png`, `learning_curves.png`, `horizon.png`.

The memory horizon of a setting (task, cell, GRU variant, init, hidden size) is the largest
sequence length `T` at which a strict majority of its seeds meet the task's solved criterion
(`solved` in `result.json`, decided by the task: copy recall accuracy >= 0.99, adding
MSE <= 0.01). It is "none" if no tested `T` is solved, and ">= T" when the largest tested `T` is
solved (the grid stops there; the cell may go further).

    python -m experiments.report runs/demo      # re-aggregate a root by hand
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import sys
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from experiments import files

CSV_FIELDS = (
    "task", "cell", "gru_variant", "init", "hidden_size", "seq_len", "seed", "steps",
    "loss", "normalized_loss", "accuracy", "solved", "steps_to_solve", "final_step", "stopped",
    "wall_time_s", "workdir",
)
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILES = ("loss_vs_len.png", "learning_curves.png", "horizon.png")

Row = dict[str, Any]


class Setting(NamedTuple):
    """What one horizon is measured for: one line in the plots."""

    task: str
    cell: str
    gru_variant: str  # "" unless cell == "gru"
    init: str
    hidden_size: int


class Horizon(NamedTuple):
    """The memory horizon of one setting.

    Attributes:
      seq_len: the largest `T` solved by a strict majority of seeds, or None.
      at_largest: True when `seq_len` is the largest `T` tested (then it is a lower bound).
      solved: {T: (seeds solved, seeds run)} for every tested `T`, ascending.
    """

    seq_len: int | None
    at_largest: bool
    solved: dict[int, tuple[int, int]]

    def text(self) -> str:
        if self.seq_len is None:
            return "none"
        return f">= {self.seq_len}" if self.at_largest else str(self.seq_len)


class Report(NamedTuple):
    table: str             # the horizon table (markdown), as printed
    paths: dict[str, str]  # file name -> path written


# ----------------------------------------------------------------------------- reading


def find_results(root: str) -> list[str]:
    """The directories under `root` that hold a `result.json` (finished runs), sorted.

    Folders whose name starts with "_" are not read (e.g. the horizon search's learning-rate
    selection runs, `ROOT/_lr/`: they are not points of the horizon table)."""
    found = []
    for d, subdirs, files in os.walk(root):
        subdirs[:] = [s for s in subdirs if not s.startswith("_")]
        if RESULT_FILE in files:
            found.append(d)
    return sorted(found)


def read_result(root: str, workdir: str) -> dict[str, Any]:
    with open(os.path.join(root, workdir, RESULT_FILE)) as f:
        return json.load(f)


def load_rows(root: str) -> list[Row]:
    """Reads every `result.json` under `root` into one row per run and seed.

    Returns:
      Rows keyed by `CSV_FIELDS`, sorted by setting, `seq_len`, seed. `workdir` is relative to
      `root`, so two roots holding the same runs give the same rows.
    """
    rows = []
    for path in find_results(root):
        workdir = os.path.relpath(path, root)
        result = read_result(root, workdir)
        for seed in result["seeds"]:
            rows.append({
                "task": result["task"],
                "cell": result["cell"],
                "gru_variant": result["gru_variant"] if result["cell"] == "gru" else "",
                "init": result["init"],
                "hidden_size": int(result["hidden_size"]),
                "seq_len": int(result["seq_len"]),
                "seed": int(seed["seed"]),
                "steps": int(result["steps"]),
                "loss": float(seed["loss"]),
                "normalized_loss": float(seed["normalized_loss"]),
                "accuracy": float(seed["accuracy"]),
                "solved": bool(seed["solved"]),
                "steps_to_solve": seed["steps_to_solve"],
                # Where and why the run ended (results written before train.stop_when_solved
                # existed always ran their budget).
                "final_step": int(result.get("final_step", result["steps"])),
                "stopped": result.get("stopped", "budget"),
                "wall_time_s": float(result["wall_time_s"]),
                "workdir": workdir,
            })
    rows.sort(key=lambda r: (setting_of(r), r["seq_len"], r["seed"], r["workdir"]))
    return rows


def setting_of(row: Row) -> Setting:
    return Setting(row["task"], row["cell"], row["gru_variant"], row["init"], row["hidden_size"])


def label(s: Setting, with_size: bool = False) -> str:
    """`lstm/forget_bias`, `gru[reset_before]/default`, with ` H=40` if asked."""
    cell = f"gru[{s.gru_variant}]" if s.gru_variant not in ("", "reset_after") else s.cell
    return f"{cell}/{s.init}" + (f" H={s.hidden_size}" if with_size else "")


def _group(rows: list[Row], key: Callable[[Row], Any]) -> dict[Any, list[Row]]:
    groups = collections.defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return dict(sorted(groups.items()))


def _seq_len(row: Row) -> int:
    return row["seq_len"]


# ----------------------------------------------------------------------------- horizon


def horizons(rows: list[Row]) -> dict[Setting, Horizon]:
    """The memory horizon of every setting in `rows` (majority rule, see the module doc)."""
    out = {}
    for setting, group in _group(rows, setting_of).items():
        solved = {t: (sum(r["solved"] for r in runs), len(runs))
                  for t, runs in _group(group, _seq_len).items()}
        majority = [t for t, (k, n) in solved.items() if 2 * k > n]
        best = max(majority) if majority else None
        out[setting] = Horizon(best, best is not None and best == max(solved), solved)
    return out


# ----------------------------------------------------------------------------- tables


def results_csv(rows: list[Row]) -> str:
    """`results.csv` text: one line per run and seed; an unsolved `steps_to_solve` is empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r[k] is None else r[k] for k in CSV_FIELDS})
    return buf.getvalue()


def horizon_table(rows: list[Row]) -> str:
    """The memory-horizon table (markdown), one line per setting."""
    lines = ["| task | cell/init | H | horizon T (majority of seeds) | seeds solved at each T |",
             "|---|---|---|---|---|"]
    for s, h in horizons(rows).items():
        per_t = ", ".join(f"{t}: {k}/{n}" for t, (k, n) in h.solved.items())
        lines.append(f"| {s.task} | {label(s)} | {s.hidden_size} | {h.text()} | {per_t} |")
    return "\n".join(lines)


def _mean_std(values: list[float], fmt: str = ".3g") -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():{fmt}} ± {v.std():.2g}"


def summary_markdown(rows: list[Row], root: str) -> str:
    """`summary.md`: the horizon table, the rule behind it, and the per-`T` numbers."""
    workdirs = sorted({r["workdir"] for r in rows})
    criteria = {}
    for workdir in workdirs:
        result = read_result(root, workdir)
        criteria.setdefault(result["task"], result.get("solved_criterion", "(not recorded)"))
    out = [
        "# Memory horizon",
        "",
        f"{len(workdirs)} runs, {len(rows)} (run, seed) results.",
        "",
        "Horizon = the largest sequence length T at which a **strict majority** of the seeds "
        "meet the task's solved criterion; `none` if no tested T is; `>= T` when the largest "
        "tested T is solved (the grid stops there, the cell may go further).",
        "",
        *(f"- {task}: {text}" for task, text in sorted(criteria.items())),
        "",
        horizon_table(rows),
        "",
        "## Per sequence length",
        "",
        "Normalized loss = final eval loss / the task's memoryless baseline (1 = no memory). "
        "Mean ± std over seeds (population std). Steps to solve: the first eval step at which "
        "each solved seed met the criterion. Ended: `solved at s` = every seed was solved at "
        "step s and the run stopped there (`train.stop_when_solved`); `budget` = it took all "
        "its steps.",
        "",
        "| task | cell/init | H | T | steps | ended | seeds solved | normalized loss | accuracy "
        "| steps to solve | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, group in _group(rows, setting_of).items():
        for t, runs in _group(group, _seq_len).items():
            to_solve = sorted(r["steps_to_solve"] for r in runs if r["steps_to_solve"] is not None)
            wall = sum({r["workdir"]: r["wall_time_s"] for r in runs}.values())
            steps = "/".join(str(v) for v in sorted({r["steps"] for r in runs}))
            out.append(
                f"| {s.task} | {label(s)} | {s.hidden_size} | {t} | {steps} | {_ended(runs)} "
                f"| {sum(r['solved'] for r in runs)}/{len(runs)} "
                f"| {_mean_std([r['normalized_loss'] for r in runs])} "
                f"| {_mean_std([r['accuracy'] for r in runs], '.3f')} "
                f"| {', '.join(map(str, to_solve)) or '-'} | {wall:.0f} |")
    return "\n".join(out) + "\n"


def _ended(runs: list[Row]) -> str:
    """How the runs of one (setting, T) ended: "solved at s" per run, or "budget"."""
    ends = {r["workdir"]: (r["stopped"], r["final_step"]) for r in runs}
    return ", ".join(f"solved at {step}" if why == "solved" else "budget"
                     for why, step in ends.values())


# ----------------------------------------------------------------------------- plots


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib  # noqa: PLC0415  (a backend must be chosen before pyplot loads)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


_COLORS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green", "irnn": "tab:orange",
           "urlstm": "tab:purple", "mingru": "tab:olive", "minlstm": "tab:cyan"}
_MORE_COLORS = ("tab:brown", "tab:pink", "tab:gray")
_LINES = {"default": "-", "forget_bias": "--", "chrono": ":", "torch": "-."}
_MARKERS = {"default": "o", "forget_bias": "s", "chrono": "^", "torch": "v"}


def styles(settings: Iterable[Setting]) -> dict[Setting, dict[str, str]]:
    """Matplotlib styles: colour by cell (GRU variant, and hidden size where several), line and
    marker by init (`plot(..., **styles(settings)[s])`).

    The same setting gets the same style in every plot.
    """
    with_size = sizes_differ(settings)
    colors, extra, out = {}, iter(_MORE_COLORS * 4), {}
    for s in sorted(settings):
        cell = label(s, with_size).split("/")[0], s.hidden_size if with_size else 0
        if cell not in colors:
            base = _COLORS.get(cell[0])
            colors[cell] = base if base and base not in colors.values() else next(extra)
        out[s] = dict(color=colors[cell], linestyle=_LINES.get(s.init, "-"),
                         marker=_MARKERS.get(s.init, "o"))
    return out


def sizes_differ(settings: Iterable[Setting]) -> bool:
    """True when one cell/init appears with several hidden sizes (labels must then show H)."""
    sizes = collections.defaultdict(set)
    for s in settings:
        sizes[s._replace(hidden_size=0)].add(s.hidden_size)
    return any(len(v) > 1 for v in sizes.values())


def save_figure(fig, plt, path: str) -> None:
    """Writes `fig` as a PNG (110 dpi) to `path` atomically and closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    files.atomic_write(path, buf.getvalue())


def _length_ticks(ax, lengths: list[int]) -> None:
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(t) for t in lengths])
    ax.minorticks_off()


def plot_loss_vs_len(rows: list[Row], path: str) -> None:
    """Plot 1: final normalized loss against T (log-log) per cell/init; band and dots = seeds."""
    plt = pyplot()
    tasks = sorted({r["task"] for r in rows})
    by_setting = _group(rows, setting_of)
    style_of, with_size = styles(by_setting), sizes_differ(by_setting)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for s, group in by_setting.items():
            if s.task != task:
                continue
            per_t = _group(group, _seq_len)
            ts = np.array(list(per_t))
            values = [np.array([r["normalized_loss"] for r in g]) for g in per_t.values()]
            st = style_of[s]
            ax.plot(ts, [v.mean() for v in values], label=label(s, with_size), **st)
            ax.fill_between(ts, [v.min() for v in values], [v.max() for v in values],
                            color=st["color"], alpha=0.12, linewidth=0)
            for t, v in zip(ts, values):
                ax.scatter(np.full(v.shape, t), v, color=st["color"], s=9, alpha=0.45)
        ax.axhline(1.0, color="gray", linewidth=1.2, linestyle="--", label="memoryless baseline")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _length_ticks(ax, sorted({r["seq_len"] for r in rows if r["task"] == task}))
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("final eval loss / baseline")
        ax.set_title(f"{task}: normalized final loss (line = seed mean, band/dots = seeds)",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, plt, path)


def read_curve(root: str, workdir: str, baseline: float) -> tuple[np.ndarray, np.ndarray]:
    """The eval learning curve of one run, from its `metrics.jsonl`.

    Args:
      root: the sweep root.
      workdir: the run's directory, relative to `root`.
      baseline: the task's memoryless loss, to normalize per-seed losses.

    Returns:
      (steps [N], normalized loss [N, S]) from the `split == "eval"` rows (the train rows if
      the run logged no eval rows), S seeds; empty arrays if there is no metrics file.
    """
    path = os.path.join(root, workdir, METRICS_FILE)
    if not os.path.exists(path):
        return np.zeros(0), np.zeros((0, 1))
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    chosen = ([r for r in records if r.get("split") == "eval"]
              or [r for r in records if r.get("split", "train") == "train"])
    if not chosen:
        return np.zeros(0), np.zeros((0, 1))
    values = []
    for r in chosen:
        per_seed = r.get("per_seed", {})
        if "normalized_loss" in per_seed:
            values.append(per_seed["normalized_loss"])
        elif "loss" in per_seed:
            values.append([v / baseline for v in per_seed["loss"]])
        else:
            values.append([r["normalized_loss"]])
    return np.array([r["step"] for r in chosen]), np.array(values, dtype=np.float64)


def plot_learning_curves(rows: list[Row], root: str, path: str) -> None:
    """Plot 2: eval normalized loss against step; one panel per (task, T), a line per setting."""
    plt = pyplot()
    panels = sorted({(r["task"], r["seq_len"]) for r in rows})
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.4 * nrows + 0.8),
                             squeeze=False)
    by_setting = _group(rows, setting_of)
    style_of, with_size = styles(by_setting), sizes_differ(by_setting)
    handles = {}
    for ax, (task, t) in zip(axes.flat, panels):
        for s, group in by_setting.items():
            for workdir in sorted({r["workdir"] for r in group if r["seq_len"] == t
                                   and r["task"] == task}):
                steps, values = read_curve(root, workdir, read_result(root, workdir)["baseline"])
                if not len(steps):
                    continue
                st = style_of[s]
                (line,) = ax.plot(steps, values.mean(axis=1), color=st["color"],
                                  linestyle=st["linestyle"])
                handles.setdefault(label(s, with_size), line)
                if values.shape[1] > 1:
                    ax.fill_between(steps, values.min(axis=1), values.max(axis=1),
                                    color=st["color"], alpha=0.12, linewidth=0)
        ax.axhline(1.0, color="gray", linewidth=1.2, linestyle="--")
        ax.set_yscale("log")
        ax.set_title(f"{task}, T = {t}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("eval loss / baseline")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = dict(sorted(handles.items()))
    fig.legend(list(handles.values()), list(handles), loc="upper center", frameon=False,
               ncol=min(6, len(handles)), fontsize=9,
               title="line = seed mean, band = seed range, dashed gray = memoryless baseline",
               title_fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_size_inches()[1]))
    save_figure(fig, plt, path)


def plot_horizon(rows: list[Row], path: str) -> None:
    """Plot 3: the memory horizon of each cell/init as a bar (log scale), a panel per task."""
    plt = pyplot()
    hs = horizons(rows)
    tasks = sorted({s.task for s in hs})
    style_of, with_size = styles(hs), sizes_differ(hs)
    width = max(4.8, 1.0 * max(sum(s.task == t for s in hs) for t in tasks) + 1.5)
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        settings = [s for s in hs if s.task == task]
        tested = sorted({t for s in settings for t in hs[s].solved})
        bottom = tested[0] / 2  # bars start below the shortest T, so "none" stays visible
        for i, s in enumerate(settings):
            h = hs[s]
            top = h.seq_len or bottom * 1.15
            ax.bar(i, top - bottom, bottom=bottom, color=style_of[s]["color"],
                   alpha=0.85 if h.seq_len else 0.25, hatch="//" if h.at_largest else None,
                   edgecolor="black", linewidth=0.6)
            ax.text(i, top * 1.07, h.text(), ha="center", va="bottom", fontsize=9)
        ax.set_yscale("log")
        ax.set_yticks(tested)
        ax.set_yticklabels([str(t) for t in tested])
        ax.minorticks_off()
        ax.set_ylim(bottom, max(tested) * 2.0)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels([label(s, with_size).replace("/", "\n") for s in settings],
                           fontsize=8)
        ax.set_ylabel("largest T solved by a majority of seeds")
        ax.set_title(f"{task}: memory horizon\n(hatched: solved at the longest T tested)",
                     fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, plt, path)


# ----------------------------------------------------------------------------- entry


def write_report(root: str) -> Report:
    """Reads every finished run under `root`; writes results.csv, summary.md and the plots.

    Raises:
      ValueError: if no `result.json` is found under `root`.
    """
    rows = load_rows(root)
    if not rows:
        raise ValueError(f"report root={root!r}: no finished run ({RESULT_FILE}) under it")
    paths = {name: os.path.join(root, name)
             for name in ("results.csv", "summary.md", *PLOT_FILES)}
    files.atomic_write(paths["results.csv"], results_csv(rows))
    files.atomic_write(paths["summary.md"], summary_markdown(rows, root))
    plot_loss_vs_len(rows, paths["loss_vs_len.png"])
    plot_learning_curves(rows, root, paths["learning_curves.png"])
    plot_horizon(rows, paths["horizon.png"])
    return Report(horizon_table(rows), paths)


def print_report(report: Report) -> None:
    print(report.table)
    print()
    for name, path in report.paths.items():
        print(f"{name:>20}: {path}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m experiments.report ROOT")
    print_report(write_report(sys.argv[1]))
