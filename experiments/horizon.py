"""Adaptive memory-horizon search: the longest T each (task, cell, init) still solves.

    python -m experiments.horizon --tasks=adding --cells=rnn,lstm,gru --inits=chrono \
        --recipe=tallec --start_len=50 --max_len=1000 --steps=5000 --num_seeds=3 \
        --root=runs/horizon_adding
    python -m experiments.horizon --root=runs/horizon_adding --aggregate_only   # after shards

For each search (task, cell, GRU variant, init) it trains at `--start_len`, multiplies T by
`--factor` while a strict majority of the seeds is solved (never past `--max_len`; if the start
fails, it divides instead, down to T = 2), then bisects (geometric midpoints) between the
longest solved and the shortest failed length until their ratio is at most `--resolution`.
Each length is one sweep point (`experiments/sweep.py`): the same workdir layout
`ROOT/<task>/<cell>-<init>/T<T>`, `train.stop_when_solved` on (a point ends at the first eval
with every seed solved), finished points skipped and interrupted ones resumed when the command
is rerun, and the sweep's report (table, plots) written over the root.

The search is a pure function of the finished points, so `ROOT/horizon.json` is rebuilt from the
`result.json` files alone (`--aggregate_only`; sharded runs give the same file as one run). It is
a list, one entry per search (a command rewrites its own searches' entries and keeps those of
the root's other searches, e.g. an earlier `--cells=lstm` when `--cells=gru` runs next):
{task, cell, gru_variant, init, horizon (int or null), lower_bound (the longest length tried was
solved), complete, budget_steps, num_seeds, learning_rate, start_len, factor, resolution,
max_len, min_len, points: [{seq_len, solved_fraction, steps_to_solve, normalized_loss,
final_step}]}, and for an incomplete search stopped_at:
{seq_len, reason} (e.g. "failed: FloatingPointError: non-finite loss ...", from the point's
failure.json, or "not finished").

A fair cell comparison (`--lr_grid=3e-4,1e-3,3e-3 --lr_ref_len=100`): before its search, each
(task, cell, init) trains at the reference length with each learning rate (under
`ROOT/_lr/<lr>/...`, ignored by the horizon report) and searches with the best one (most seeds
solved, then fewest steps to solve, then lowest loss); when the search comes to the reference
length, the best rate's run there is copied into the search's layout, not trained again. The
choice and the grid's numbers are in horizon.json.

Shards (`--shard_index/--num_shards`, or a SLURM array as for the sweep) own whole searches:
search i belongs to shard i % num_shards.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import app, flags

from experiments import checkpoint, files, parallel, report, sweep
from experiments.configs import recipes, sweeps

HORIZON_FILE = "horizon.json"
LR_DIR = "_lr"  # learning-rate selection runs, under the root; the report skips "_" folders


class Search(NamedTuple):
    """One horizon search: a grid point without its length."""

    task: str
    cell: str
    gru_variant: str
    init: str

    def at(self, seq_len: int) -> sweep.Point:
        return sweep.Point(self.task, self.cell, self.gru_variant, self.init, seq_len)


class LengthRule(NamedTuple):
    """How lengths are chosen: start, growth factor, bisection resolution, cap and floor."""

    start_len: int
    factor: float
    resolution: float
    max_len: int
    min_len: int = 2


# trial(T): the finished result.json of the point at length T, or None if it has none.
Trial = Callable[[int], Optional[dict]]


def next_length(rule: LengthRule, solved: dict[int, bool]) -> Optional[int]:
    """The next length to train, given the outcome at each length tried so far; None when done.

    Doubling phase: from `start_len`, times `factor` while every tried length is solved (capped
    at `max_len`); if the start fails, divided by `factor` until one is solved (not below
    `min_len`). Bisection phase: the geometric midpoint of the longest solved and the shortest
    failed length, until their ratio is at most `resolution` or no integer lies between them.
    """
    if not solved:
        return rule.start_len
    ok = [t for t, s in solved.items() if s]
    failed = [t for t, s in solved.items() if not s]
    lo = max(ok) if ok else None
    hi = min(failed) if failed else None
    if hi is None:  # still growing
        if lo >= rule.max_len:
            return None
        return min(max(int(round(lo * rule.factor)), lo + 1), rule.max_len)
    if lo is None:  # nothing solved yet: shrink
        down = min(int(hi / rule.factor), hi - 1)
        return down if down >= rule.min_len else None
    if hi / lo <= rule.resolution:
        return None
    mid = int(round(math.sqrt(lo * hi)))
    return mid if lo < mid < hi else None


def run_search(rule: LengthRule, trial: Trial) -> dict[int, Optional[dict]]:
    """Drives `trial` over the lengths `next_length` picks; {T: result or None (not run)}.

    `trial(T)` returns the finished run's result.json dict, or None if the point has not
    finished (aggregate-only mode, or a failed run): the search stops there, incomplete.
    """
    results: dict[int, Optional[dict]] = {}
    solved: dict[int, bool] = {}
    while (t := next_length(rule, solved)) is not None:
        result = trial(t)
        results[t] = result
        if result is None:
            break
        solved[t] = _majority(result)
    return results


def _majority(result: dict) -> bool:
    seeds = result["seeds"]
    return 2 * sum(bool(s["solved"]) for s in seeds) > len(seeds)


def summarize(search: Search, rule: LengthRule, results: dict[int, Optional[dict]], *,
              budget_steps: int, num_seeds: int, learning_rate: Optional[float],
              lr_grid: Optional[dict] = None,
              why_missing: Callable[[int], str] = lambda seq_len: "not finished"
              ) -> dict[str, Any]:
    """The horizon.json entry of one search from its results.

    An incomplete search (a length it needs has no result) records where and why it stopped:
    `stopped_at = {seq_len, reason}`, the reason being `why_missing(seq_len)`.
    """
    done = {t: r for t, r in sorted(results.items()) if r is not None}
    solved = [t for t, r in done.items() if _majority(r)]
    complete = next_length(rule, {t: _majority(r) for t, r in done.items()}) is None \
        and len(done) == len(results)
    horizon = max(solved) if solved else None
    entry = {
        **search._asdict(), "horizon": horizon,
        "lower_bound": bool(done) and horizon is not None and horizon == max(done),
        "complete": complete, "budget_steps": budget_steps, "num_seeds": num_seeds,
        "learning_rate": learning_rate, **rule._asdict(),
        "points": [{"seq_len": t, "solved_fraction": r["solved_fraction"],
                    "steps_to_solve": [s["steps_to_solve"] for s in r["seeds"]],
                    "normalized_loss": [s["normalized_loss"] for s in r["seeds"]],
                    "final_step": r.get("final_step", r["steps"])} for t, r in done.items()],
    }
    if lr_grid is not None:
        entry["lr_grid"] = lr_grid
    missing = [t for t, r in results.items() if r is None]
    if missing:
        entry["stopped_at"] = {"seq_len": missing[0], "reason": why_missing(missing[0])}
    return entry


# ----------------------------------------------------------------------------- running


def searches(grid: dict[str, Any]) -> list[Search]:
    """Every search of a resolved grid, in the sweep's point order (the order shards are cut
    from); a grid point's length is dropped."""
    return list(dict.fromkeys(Search(p.task, p.cell, p.gru_variant, p.init)
                              for p in sweep.grid_points(grid)))


def _with_lr(grid: dict[str, Any], task: str, lr: Optional[float]) -> dict[str, Any]:
    if lr is None:
        return grid
    grid = copy.deepcopy(grid)
    grid["tasks"][task]["config"]["train.learning_rate"] = lr
    return grid


TrainFn = Optional[Callable[[Any, str], Any]]  # (config, workdir); None: the trainer


def _trial(grid: dict[str, Any], search: Search, root: str, train: bool,
           train_fn: TrainFn = None) -> Trial:
    """`trial(T)`: the point's result, training it first (skip/resume as the sweep) if `train`."""
    def trial(seq_len: int) -> Optional[dict]:
        point = search.at(seq_len)
        if train:
            sweep.run_points(grid, [point], root, train_fn=train_fn)
        path = os.path.join(root, point.name, report.RESULT_FILE)
        if not os.path.exists(path):
            return None
        return report.read_result(root, point.name)
    return trial


def _learning_rate(grid: dict[str, Any], search: Search) -> float:
    return float(sweep.make_config(grid, search.at(grid["tasks"][search.task]["seq_lens"][0]))
                 .train.learning_rate)


def _lr_root(root: str, lr: float) -> str:
    return os.path.join(root, LR_DIR, f"lr{lr:g}")


def select_lr(grid: dict[str, Any], search: Search, root: str, lrs: Sequence[float],
              ref_len: int, train: bool, train_fn: TrainFn = None
              ) -> tuple[Optional[float], dict]:
    """Trains the search's cell at `ref_len` with each learning rate; the best and the table.

    Best: most seeds solved, then the fewest mean steps to solve (unsolved seeds count as the
    budget), then the lowest mean normalized loss. None if a run is missing (not trained yet).
    """
    table, scores = {}, {}
    for lr in lrs:
        result = _trial(_with_lr(grid, search.task, lr), search, _lr_root(root, lr), train,
                        train_fn)(ref_len)
        if result is None:
            return None, table
        seeds = result["seeds"]
        to_solve = [s["steps_to_solve"] if s["steps_to_solve"] is not None else result["steps"]
                    for s in seeds]
        loss = sum(s["normalized_loss"] for s in seeds) / len(seeds)
        table[f"{lr:g}"] = {"seq_len": ref_len, "solved_fraction": result["solved_fraction"],
                            "mean_steps_to_solve": sum(to_solve) / len(to_solve),
                            "mean_normalized_loss": loss}
        scores[lr] = (-result["solved_fraction"], sum(to_solve) / len(to_solve), loss)
    return min(scores, key=scores.get), table


def horizon_search(grid: dict[str, Any], search: Search, rule: LengthRule, root: str, *,
                   train: bool = True, lrs: Sequence[float] = (),
                   lr_ref_len: Optional[int] = None, train_fn: TrainFn = None) -> dict[str, Any]:
    """Runs one search (or, with train=False, replays it from the finished points alone).

    Args:
      grid: a resolved sweep grid (`sweep.resolve_grid`) holding the search's task.
      search: the (task, cell, variant, init) searched.
      rule: the lengths' rule.
      root: the root of the points' workdirs.
      train: train missing points (False: stop the search at the first missing one).
      lrs: learning rates to choose from at `lr_ref_len` first (empty: the config's).
      lr_ref_len: reference length of the choice (default: the rule's start).
      train_fn: `(config, workdir)` -> anything, the trainer by default (tests pass a fake).

    Returns:
      Its horizon.json entry.
    """
    lr_table = lr = None
    if lrs:
        lr, lr_table = select_lr(grid, search, root, lrs, lr_ref_len or rule.start_len, train,
                                 train_fn)
        if lr is None:  # the choice is not finished: nothing to search with yet
            return summarize(search, rule, {rule.start_len: None},
                             budget_steps=_budget(grid, search),
                             num_seeds=grid["tasks"][search.task]["num_seeds"],
                             learning_rate=None, lr_grid=lr_table,
                             why_missing=lambda _: "the learning-rate choice is not finished")
    grid = _with_lr(grid, search.task, lr)
    trial = _trial(grid, search, root, train, train_fn)
    if lrs and train:
        trial = _reusing(trial, root, search, lr_ref_len or rule.start_len, lr)
    results = run_search(rule, trial)
    return summarize(search, rule, results, budget_steps=_budget(grid, search),
                     num_seeds=grid["tasks"][search.task]["num_seeds"],
                     learning_rate=_learning_rate(grid, search), lr_grid=lr_table,
                     why_missing=lambda seq_len: _why_missing(root, search.at(seq_len)))


def _reusing(trial: Trial, root: str, search: Search, ref_len: int, lr: float) -> Trial:
    """`trial`, except that when the search comes to the reference length it first copies the
    chosen learning rate's finished run there into the search's layout, so that length is not
    trained twice.

    The copy has the same config (the sweep checks `sweep_point.json` when it reads it); it is
    made under a temporary name and renamed into place; an existing workdir is left alone.
    """
    name = search.at(ref_len).name
    source, target = os.path.join(_lr_root(root, lr), name), os.path.join(root, name)

    def reusing(seq_len: int) -> Optional[dict]:
        if (seq_len == ref_len and not os.path.exists(target)
                and os.path.exists(os.path.join(source, report.RESULT_FILE))):
            partial = f"{target}.copying-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(source, partial, ignore=shutil.ignore_patterns(checkpoint.LOCK_FILE))
            try:
                os.rename(partial, target)
            except OSError:  # another process put it there first
                shutil.rmtree(partial, ignore_errors=True)
        return trial(seq_len)
    return reusing


def _why_missing(root: str, point: sweep.Point) -> str:
    """Why a point has no result: its recorded failure, or that it has not finished."""
    failure = sweep.failure_reason(os.path.join(root, point.name))
    if failure is not None:
        return f"failed: {failure}"
    return ("not finished (not started, interrupted, or running in another process); rerun "
            "the command to train it")


def _budget(grid: dict[str, Any], search: Search) -> int:
    spec = grid["tasks"][search.task]
    return int(sweep.make_config(grid, search.at(spec["seq_lens"][0])).train.steps)


def horizon_table(entries: Sequence[dict]) -> str:
    """The search results as a markdown table, one line per search."""
    lines = ["| task | cell/init | horizon T | lengths tried: seeds solved (steps to solve) "
             "| budget | lr |", "|---|---|---|---|---|---|"]
    for e in entries:
        cell = e["cell"] if e["gru_variant"] in ("", "reset_after") or e["cell"] != "gru" \
            else f"gru[{e['gru_variant']}]"
        if e["horizon"] is None:
            text = f"< {min(p['seq_len'] for p in e['points'])}" if e["points"] else "-"
        else:
            text = f">= {e['horizon']}" if e["lower_bound"] else str(e["horizon"])
        if not e["complete"]:
            stop = e.get("stopped_at")
            text += (f" (incomplete: T = {stop['seq_len']} {_short(stop['reason'])})" if stop
                     else " (incomplete)")
        tried = ", ".join(
            f"{p['seq_len']}: {round(p['solved_fraction'] * len(p['steps_to_solve']))}/"
            f"{len(p['steps_to_solve'])}"
            + (f" ({'/'.join(str(s) for s in p['steps_to_solve'] if s is not None)})"
               if any(s is not None for s in p["steps_to_solve"]) else "")
            for p in e["points"])
        lr = "-" if e["learning_rate"] is None else f"{e['learning_rate']:g}"
        lines.append(f"| {e['task']} | {cell}/{e['init']} | {text} | {tried or '-'} "
                     f"| {e['budget_steps']} × {e['num_seeds']} seeds | {lr} |")
    return "\n".join(lines)


def _short(reason: str, limit: int = 90) -> str:
    """A reason for a table cell: its first clause, at most `limit` characters."""
    text = reason.split(";")[0]
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _key(entry: dict) -> tuple:
    return tuple(entry.get(field) for field in Search._fields)


def write_horizons(root: str, entries: Sequence[dict]) -> str:
    """Writes `entries` into ROOT/horizon.json, keeping the entries of other searches already
    there (an earlier command's, e.g. `--cells=lstm` before `--cells=gru`): a search's entry is
    replaced in place, a new one appended. A file that cannot be read is replaced (it is derived
    from the points; `--aggregate_only` over every search rebuilds it), with a warning."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, HORIZON_FILE)
    merged: dict[tuple, dict] = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                merged = {_key(e): e for e in json.load(f)}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            print(f"warning: {path}: unreadable ({e}); rewritten with this command's searches",
                  file=sys.stderr)
    merged.update((_key(e), e) for e in entries)
    files.atomic_write(path, json.dumps(list(merged.values()), indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------- main


def _define_flags() -> None:
    """Flags exist only when this module runs as a program: the sweep's grid flags, and:"""
    sweep.define_grid_flags("horizon")  # its seq_lens are not used: the search picks them
    flags.DEFINE_string("recipe", None, f"a paper's training recipe: {list(recipes.RECIPES)} "
                        f"(experiments/configs/recipes.py)")
    flags.DEFINE_integer("start_len", None, "first length (default: the grid task's "
                         "start_len, else its first seq_len)")
    flags.DEFINE_float("factor", None, "growth factor of the length while solved (> 1; "
                       "default: the grid task's, else 2)")
    flags.DEFINE_float("resolution", None, "bisect until shortest failed / longest solved "
                       "<= this (> 1; default: the grid task's, else 1.25)")
    flags.DEFINE_integer("max_len", None, "never train longer sequences than this (default: "
                         "the grid task's, else 1000)")
    flags.DEFINE_list("lr_grid", None, "pick each cell's learning rate from these at "
                      "--lr_ref_len first (a fair comparison)")
    flags.DEFINE_integer("lr_ref_len", None, "reference length of --lr_grid (default: "
                         "--start_len)")
    flags.DEFINE_bool("aggregate_only", False, "train nothing; rebuild horizon.json and the "
                      "report from the finished points under --root")


_RULE_DEFAULTS = {"factor": 2.0, "resolution": 1.25, "max_len": 1000}


def _rules(grid: dict[str, Any], f: Any) -> dict[str, LengthRule]:
    """Each task's LengthRule: the flags, else the grid task's own keys (start_len, factor,
    resolution, max_len), else the defaults (start: the task's first seq_len)."""
    rules = {}
    for task, spec in grid["tasks"].items():
        values = {k: spec.get(k, default) for k, default in _RULE_DEFAULTS.items()}
        values["start_len"] = spec.get("start_len", spec["seq_lens"][0])
        values.update({k: getattr(f, k) for k in values if getattr(f, k) is not None})
        rule = LengthRule(**values)
        if not rule.factor > 1 or not rule.resolution > 1:
            raise ValueError(f"--factor and --resolution: expected > 1, got {rule.factor}, "
                             f"{rule.resolution}")
        if not 1 <= rule.start_len <= rule.max_len:
            raise ValueError(f"--start_len: expected 1 <= start_len <= --max_len="
                             f"{rule.max_len}, got {rule.start_len}")
        rules[task] = rule
    return rules


def _resolve(f: Any) -> dict[str, Any]:
    grid = sweep.resolve_grid(f.grid, tasks_=f.tasks, cells=f.cells, inits=f.inits,
                              gru_variants=f.gru_variants, steps=f.steps,
                              num_seeds=f.num_seeds, overrides=f.set)
    for spec in grid["tasks"].values():
        if f.recipe:
            if f.recipe not in recipes.RECIPES:
                raise ValueError(f"--recipe: unknown {f.recipe!r}; valid: "
                                 f"{', '.join(recipes.RECIPES)}")
            spec["config_arg"] = ",".join(filter(None, (spec.get("config_arg"), f.recipe)))
    return grid


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    parallel.quiet_library_logs()
    try:  # bad flags: one line, exit 2, nothing written
        if f.aggregate_only and not os.path.isdir(f.root):
            raise ValueError(f"--root: {f.root!r} does not exist (nothing to aggregate)")
        grid = _resolve(f)
        rules = _rules(grid, f)
        try:
            lrs = [float(v) for v in f.lr_grid or ()]
        except ValueError:
            raise ValueError(f"--lr_grid: expected numbers, got {f.lr_grid}") from None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    all_searches = searches(grid)
    index, count = sweep.shard_from_env(f.shard_index, f.num_shards)
    mine = set(sweep.shard(all_searches, index, count)) if not f.aggregate_only else set()
    print(f"horizon: {len(all_searches)} searches; shard {index} of {count} runs {len(mine)} of "
          f"them under {f.root}", flush=True)
    if mine:  # one CPU device per core, before JAX starts
        parallel.set_cpu_devices(*(sweep.make_config(grid, s.at(rules[s.task].start_len))
                                   for s in mine))
    start = time.time()
    with sweep.one_line_errors():  # a signal: one line, rerun to resume; a changed setting
        entries = [horizon_search(grid, s, rules[s.task], f.root, train=s in mine, lrs=lrs,
                                  lr_ref_len=f.lr_ref_len) for s in all_searches]
    print(horizon_table(entries))
    print(f"{HORIZON_FILE} (with any other searches of the root): "
          f"{write_horizons(f.root, entries)}")
    if any(report.find_results(f.root)):  # the sweep's report and the grid's probes
        sweep.finish(f.root, sweeps.GRIDS[f.grid].get("probe", ("none",)))
    print(f"horizon search: {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
