"""Sweeps: task x cell x init x sequence length (x seeds), one workdir per point, then the report.

    python -m experiments.sweep --grid=lengths --root=runs/lengths
    python -m experiments.sweep --grid=lengths --root=runs/x --tasks=copy --cells=rnn,lstm \
        --seq_lens=20,50 --steps=2000 --num_seeds=5 --set=model.hidden_size=32
    python -m experiments.sweep --grid=papers --root=runs/papers --num_shards=4 --shard_index=0
    python -m experiments.sweep --root=runs/papers --aggregate_only

Grids are plain data in `experiments/configs/sweeps.py`. Point `(task, cell, variant, init, T)`
trains in `ROOT/<task>/<cell>-<init>/T<T>` (`gru_reset_before-...` for the other GRU variant)
with `train.train_and_evaluate`, in this process, one point after the other; its `num_seeds`
seeds train together (vmapped) in that one run.

- Finished points (`result.json` present) are skipped; interrupted ones resume from their last
  checkpoint (the trainer does that by itself). Each workdir keeps the config it was started
  with (`sweep_point.json`): running a point again with a different value in any field is an
  error, so a table never mixes settings silently. Use a new root to change a grid. Every
  point's config is validated before any is recorded, so a bad `--set` leaves nothing behind.
- A point is trained under its workdir's lock (`checkpoint.lock_workdir`): a point another
  process is training is skipped, so two processes (or shards) can share a root.
- A point whose training raises (e.g. a diverged loss) does not stop the sweep: its error is
  kept in `ROOT/<point>/failure.json` (`failure_reason`), for the horizon search and for you,
  and the next run of the command retries the point; the file goes when the point finishes.
- Errors are one line and exit 2 (a bad flag or `--set`, a changed setting, a damaged
  `sweep_point.json`); SIGTERM / SIGINT save the current point's step and exit 128 + N with a
  line saying to rerun the same command to resume.
- Shards: point i of the grid belongs to shard `i % num_shards`. `--shard_index/--num_shards`
  default to SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_COUNT, so a
  SLURM array runs a grid with `sbatch --array=0-3 ... --grid=papers --root=R`; then
  `--aggregate_only --root=R` writes the report. An unsharded run writes it at its end.
- The report (`experiments/report.py`) reads every `result.json` under the root: results.csv,
  summary.md (the memory-horizon table) and three PNG plots; it prints the table and the paths.
  Then, for each "TASK:T" the grid names (`"probe": ("adding:50",)`) or `--probe` gives, the
  gradient-flow probe (`experiments/probe.py`) of the runs at that point, at init and trained,
  into ROOT/probe_<task>_T<T>/.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple, Sequence

import jax
import ml_collections
from absl import app, flags

from experiments import checkpoint, checks, configs, files, parallel, probe, report, tasks, train
from experiments import setup as setup_lib
from experiments.configs import sweeps
from gated_rnn import gru, layers

POINT_FILE = "sweep_point.json"
FAILURE_FILE = "failure.json"  # why the point's last run raised; removed when it finishes

# Inits that change nothing for a cell: such a point runs as the cell's default init, once.
_NO_OP_INITS = {"rnn": {"forget_bias", "chrono"}, "irnn": {"forget_bias", "chrono"},
                "urlstm": {"forget_bias", "chrono"}}  # no gate bias to set / UGI is its own


class Point(NamedTuple):
    """One grid point: one run (of `num_seeds` seeds) in its own workdir."""

    task: str
    cell: str
    gru_variant: str
    init: str
    seq_len: int

    @property
    def name(self) -> str:
        """The workdir relative to the root, e.g. `copy/lstm-forget_bias/T100`."""
        cell = self.cell
        if self.cell == "gru" and self.gru_variant != gru.Variant.RESET_AFTER.value:
            cell = f"gru_{self.gru_variant}"
        return f"{self.task}/{cell}-{self.init}/T{self.seq_len}"


# ----------------------------------------------------------------------------- the grid


def _check_names(field: str, values: Sequence[str], valid: Sequence[str]) -> None:
    for v in values:
        checks.one_of(field, v, valid)


def resolve_grid(name: str, *, tasks_: Sequence[str] | None = None,
                 cells: Sequence[str] | None = None, inits: Sequence[str] | None = None,
                 gru_variants: Sequence[str] | None = None,
                 seq_lens: Sequence[int] | None = None, steps: int | None = None,
                 num_seeds: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A named grid from `configs/sweeps.py` with the command line's overrides applied.

    Args:
      name: a key of `sweeps.GRIDS`.
      tasks_: keep only these tasks (a task outside the grid needs `seq_lens`).
      cells, inits, gru_variants, num_seeds: replace the grid's values for every task.
      seq_lens: replace every task's sequence lengths.
      steps: sets `train.steps` for every task.
      overrides: `"dotted.field=value"` strings set on every point's config, after the grid's.

    Returns:
      A grid dict (the layout of `sweeps.GRIDS` values), every task fully specified.

    Raises:
      ValueError: for an unknown grid, task, cell, init, GRU variant, or a bad override/length.
    """
    if name not in sweeps.GRIDS:
        raise ValueError(f"--grid: unknown grid {name!r}; valid: {sorted(sweeps.GRIDS)}")
    grid = copy.deepcopy(sweeps.GRIDS[name])
    task_names = list(tasks_) if tasks_ else list(grid["tasks"])
    _check_names("--tasks", task_names, list(tasks.TASKS))
    parsed = [_parse_override(o) for o in overrides]
    out = {}
    for task in task_names:
        spec = dict(grid["tasks"].get(task, {}))
        for key, value in (("cells", cells), ("inits", inits), ("gru_variants", gru_variants),
                           ("num_seeds", num_seeds)):
            if value is not None:
                spec[key] = value
            spec.setdefault(key, grid[key])
        if seq_lens is not None:
            spec["seq_lens"] = tuple(seq_lens)
        if not spec.get("seq_lens"):
            raise ValueError(f"--seq_lens: task {task!r} is not in grid {name!r}; give its "
                             "sequence lengths")
        config = dict(spec.get("config", {}))
        if steps is not None:
            config["train.steps"] = steps
        config.update(parsed)
        spec["config"] = config
        _check_names("--cells", spec["cells"], [c.value for c in layers.CellType])
        _check_names("--inits", spec["inits"], [i.value for i in layers.Init])
        _check_names("--gru_variants", spec["gru_variants"], [v.value for v in gru.Variant])
        for t in spec["seq_lens"]:
            checks.integer("--seq_lens", t)
        checks.integer("--num_seeds", spec["num_seeds"])
        out[task] = spec
    return {"name": name, "tasks": out}


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set: expected 'dotted.field=value', got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()  # a bare word is a string, e.g. optimizer=adam


def grid_points(grid: dict[str, Any]) -> list[Point]:
    """Every point of a resolved grid, in a fixed order (the order shards are cut from)."""
    points = []
    for task, spec in grid["tasks"].items():
        for cell in spec["cells"]:
            variants = spec["gru_variants"] if cell == "gru" else (gru.Variant.RESET_AFTER.value,)
            for variant in variants:
                for init in spec["inits"]:
                    if init in _NO_OP_INITS.get(cell, ()):
                        init = layers.Init.DEFAULT.value  # the same run, under its own name
                    points.extend(Point(task, cell, variant, init, t) for t in spec["seq_lens"])
    return list(dict.fromkeys(points))  # drop repeats, keep the order


def make_config(grid: dict[str, Any], point: Point) -> ml_collections.ConfigDict:
    """The training config of one point: the task's config at `seq_len`, then the overrides."""
    spec = grid["tasks"][point.task]
    module = importlib.import_module(f"experiments.configs.{point.task}")
    arg = ",".join(filter(None, (spec.get("config_arg"), f"seq_len={point.seq_len}")))
    config = module.get_config(arg)
    # A sweep spends its steps where the frontier is: a point ends at the first eval at which
    # every seed is solved (`--set=train.stop_when_solved=False` trains every point to the end).
    values = {"model.cell": point.cell, "model.gru_variant": point.gru_variant,
              "model.init": point.init, "num_seeds": spec["num_seeds"],
              "train.stop_when_solved": True, **spec["config"]}
    for key, value in values.items():
        _set_field(config, key, value)
    configs.rederive(config, arg, overridden=values)  # e.g. chrono's T_max, variable delay
    if config.seq_len != point.seq_len:
        raise ValueError(f"grid config sets seq_len={config.seq_len}, but the point is "
                         f"T={point.seq_len}: set lengths with --seq_lens, not --set")
    return config


def _set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node:
            raise ValueError(f"config field {dotted!r}: no {'.'.join(parents[:i + 1])!r} in the "
                             f"config; fields there: {sorted(node.keys())}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"config field {dotted!r}: unknown; fields of "
                         f"{'.'.join(parents) or 'the config'}: {sorted(node.keys())}")
    try:
        node[leaf] = value
    except TypeError as e:  # ConfigDict keeps each field's type
        raise ValueError(f"config field {dotted!r}: cannot set {value!r}: {e}") from None


# ----------------------------------------------------------------------------- running


def shard(points: Sequence[Point], index: int, count: int) -> list[Point]:
    """The points of shard `index` of `count`: point i goes to shard i % count."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard_index/--num_shards: need 0 <= index < count, got "
                         f"index={index}, count={count}")
    return [p for i, p in enumerate(points) if i % count == index]


def shard_from_env(index: int | None, count: int | None,
                   environ: dict[str, str] | None = None) -> tuple[int, int]:
    """Fills unset shard flags from a SLURM array job's environment (else shard 0 of 1)."""
    env = os.environ if environ is None else environ
    if index is None:
        index = int(env.get("SLURM_ARRAY_TASK_ID", 0)) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    if count is None:
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    return index, count


def _check_same_config(workdir: str, point: Point, config: ml_collections.ConfigDict) -> bool:
    """Records the point's config on its first run; on a later run its values must be the same.

    A field present on one side only (one the code added or removed since) is not a difference:
    such a field has no value to disagree on, and old roots stay usable.

    Returns:
      True if the workdir already held this point (finished or interrupted).
    """
    path = os.path.join(workdir, POINT_FILE)
    wanted = json.loads(json.dumps(config.to_dict(), default=str))
    if not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        files.atomic_write(path, json.dumps({"point": point._asdict(), "config": wanted},
                                            indent=1, sort_keys=True))
        return False
    with open(path) as f:
        try:
            stored = json.load(f)["config"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}); it records the "
                             f"point's config: delete it to record the current one (the point "
                             f"resumes if its checkpoints match), or use a new --root") from None
    diff = checkpoint.differing_keys(stored, wanted, shared_only=True)
    if diff:
        raise ValueError(f"{workdir}: this point was started with another config (differs in "
                         f"{diff}); use a new --root or delete the workdir")
    return True


def failure_reason(workdir: str) -> str | None:
    """The error of the point's last failed run (its first line), or None if none is recorded."""
    try:
        with open(os.path.join(workdir, FAILURE_FILE)) as f:
            return str(json.load(f)["error"]).splitlines()[0]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, IndexError):
        return f"{os.path.join(workdir, FAILURE_FILE)} is damaged"


class Outcome(NamedTuple):
    """The point names (`Point.name`) that `run_points` trained, skipped and saw fail."""

    ran: list[str]
    skipped: list[str]
    failed: list[str]


def run_point(point: Point, config: ml_collections.ConfigDict, workdir: str, *,
              train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
              tag: str | None = None) -> str:
    """Trains one point in `workdir` unless it is finished; the unit `run_points` repeats.

    Validates the config (ValueError, nothing recorded), then takes the workdir's lock (a point
    another process holds is skipped); records the config on the first run and refuses
    (ValueError) another config on a later one (`sweep_point.json`); skips a finished workdir
    (`result.json` present); otherwise trains, resuming from the last checkpoint. A point whose
    training raises is reported, not raised: its error goes to `failure.json`, and it has no
    `result.json`, so the next call retries it. A signal's `checkpoint.Stopped` is raised.

    Args:
      point: the grid point (recorded with the config).
      config: its training config (e.g. `make_config(grid, point)`).
      workdir: where it trains.
      train_fn: `(config, workdir)` -> anything; `train.train_and_evaluate` by default.
      tag: the prefix of the progress lines (default: the point's name).

    Returns:
      "ran", "skipped" (finished before, or held by another process) or "failed".
    """
    train_fn = train_fn or train.train_and_evaluate
    tag = tag or point.name
    setup_lib.validate(config)  # before anything is recorded
    try:
        with checkpoint.lock_workdir(workdir):
            return _run_locked(point, config, workdir, train_fn, tag)
    except checkpoint.WorkdirBusy as e:
        print(f"{tag}: skipped: {e}", flush=True)
        return "skipped"


def _run_locked(point: Point, config: ml_collections.ConfigDict, workdir: str,
                train_fn: Callable[[ml_collections.ConfigDict, str], Any], tag: str) -> str:
    resumed = _check_same_config(workdir, point, config)
    if os.path.exists(os.path.join(workdir, report.RESULT_FILE)):
        print(f"{tag}: finished before, skipped", flush=True)
        return "skipped"
    print(f"{tag}: {'resuming' if resumed else 'start'} ({config.num_seeds} seeds, "
          f"{config.train.steps} steps)", flush=True)
    start = time.time()
    failure = os.path.join(workdir, FAILURE_FILE)
    try:
        train_fn(config, workdir)
    except Exception as e:  # noqa: BLE001  (one diverged point must not stop a sweep)
        traceback.print_exc()
        seconds = time.time() - start
        files.atomic_write(failure, json.dumps(
            {"error": f"{type(e).__name__}: {e}", "after_s": round(seconds, 1)}, indent=1))
        print(f"{tag}: FAILED after {seconds:.0f}s", flush=True)
        return "failed"
    finally:
        jax.clear_caches()  # every point compiles its own step; keep memory flat
    if os.path.exists(failure):
        os.remove(failure)  # an earlier failure, retried and now finished
    with open(os.path.join(workdir, report.RESULT_FILE)) as f:
        result = json.load(f)
    print(f"{tag}: done in {time.time() - start:.0f}s, solved "
          f"{sum(s['solved'] for s in result['seeds'])}/{len(result['seeds'])}, "
          f"loss/baseline {_seed_values(result, 'normalized_loss')}", flush=True)
    return "ran"


def run_points(grid: dict[str, Any], points: Sequence[Point], root: str, *,
               train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None
               ) -> Outcome:
    """Trains each point not finished yet, one after the other, in this process (`run_point`).

    A point that raises is reported and the sweep goes on; it has no `result.json`, so the next
    run of the same command retries it (from its last checkpoint).

    Args:
      grid: from `resolve_grid`.
      points: the points to run (e.g. one shard).
      root: the sweep root; point p trains in `root/p.name`.
      train_fn: `(config, workdir)` -> anything; `train.train_and_evaluate` by default.
    """
    outcome = Outcome([], [], [])
    for n, point in enumerate(points, 1):
        how = run_point(point, make_config(grid, point), os.path.join(root, point.name),
                        train_fn=train_fn, tag=f"[{n}/{len(points)}] {point.name}")
        getattr(outcome, how).append(point.name)
    return outcome


def _seed_values(result: dict[str, Any], key: str) -> str:
    return " ".join(f"{s[key]:.3g}" for s in result["seeds"])


# ----------------------------------------------------------------------------- main


def define_grid_flags(default_grid: str) -> None:
    """The flags a sweep and the horizon search share: the grid, the root, the grid's
    overrides (tasks, cells, inits, GRU variants, steps, seeds, --set) and the shard."""
    flags.DEFINE_string("grid", default_grid, f"a grid of experiments/configs/sweeps.py: "
                        f"{sorted(sweeps.GRIDS)}")
    flags.DEFINE_string("root", None, "directory holding one workdir per point", required=True)
    flags.DEFINE_list("tasks", None, "only these tasks (default: the grid's)")
    flags.DEFINE_list("cells", None, "replace the grid's cells (rnn, lstm, gru, irnn, urlstm, "
                      "mingru, minlstm)")
    flags.DEFINE_list("inits", None, "replace the grid's inits (default, forget_bias, chrono, "
                      "torch)")
    flags.DEFINE_list("gru_variants", None, "replace the grid's GRU variants (reset_after, "
                      "reset_before)")
    flags.DEFINE_integer("steps", None, "train.steps (the budget) of every point")
    flags.DEFINE_integer("num_seeds", None, "seeds per point (vmapped in one run)")
    flags.DEFINE_multi_string("set", [], "dotted.config.field=value for every point, e.g. "
                              "--set=model.hidden_size=32 (repeatable)")
    flags.DEFINE_integer("shard_index", None, "this shard (default: $SLURM_ARRAY_TASK_ID - "
                         "$SLURM_ARRAY_TASK_MIN, else 0)")
    flags.DEFINE_integer("num_shards", None, "shards in all (default: $SLURM_ARRAY_TASK_COUNT, "
                         "else 1)")


def _define_flags() -> None:
    """Flags exist only when this module runs as a program, so importing it defines none."""
    define_grid_flags("lengths")
    flags.DEFINE_list("seq_lens", None, "replace every task's sequence lengths")
    flags.DEFINE_bool("aggregate_only", False, "run nothing; write the report from every "
                      "result.json under --root")
    flags.DEFINE_bool("dry_run", False, "print this shard's points and exit")
    flags.DEFINE_list("probe", None, "TASK:T[,TASK:T]: after the report, run the gradient-flow "
                      "probe on the runs of TASK at length T (default: the grid's 'probe'; "
                      "'none' skips it)")


def finish(root: str, probe_at: Sequence[str] = ()) -> None:
    """Writes and prints the report; then the gradient-flow probe at each "TASK:T" of probe_at."""
    report.print_report(report.write_report(root))
    for where in probe_at:
        if where == "none":
            continue
        task, _, seq_len = where.partition(":")
        if not seq_len.isdigit():
            raise ValueError(f"--probe: expected TASK:T (e.g. adding:50) or 'none', got {where!r}")
        try:
            workdirs = probe.select_workdirs(root, task, int(seq_len))
        except ValueError as e:
            print(f"probe skipped: {e}")
            continue
        probes = [probe.probe_run(w) for w in workdirs]
        print(probe.summary(probes))
        out = os.path.join(root, f"probe_{task}_T{seq_len}")
        for name, path in probe.write_probes(probes, out).items():
            print(f"{name:>20}: {path}")


class _Signalled(BaseException):
    """SIGTERM / SIGINT while no training step was in progress (a BaseException, so that
    `run_point` does not report it as a failed point and go on)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, frame):
    raise _Signalled(signum)


@contextlib.contextmanager
def one_line_errors():
    """For the command lines: a ValueError or WorkdirError is one line on stderr and exit 2; a
    signal is one line saying to rerun the same command to resume, and exit 128 + N (during
    training the trainer saves the current step first: `checkpoint.Stopped`)."""
    signals = (signal.SIGTERM, signal.SIGINT)
    main_thread = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, _raise_signalled) for s in signals} if main_thread else {}
    try:
        yield
    except checkpoint.Stopped as e:
        _exit(e.code, str(e))
    except _Signalled as e:
        _exit(128 + e.signum, f"stopped by {signal.Signals(e.signum).name} between training "
                              f"steps (nothing to save); rerun the same command to resume")
    except (ValueError, checkpoint.WorkdirError) as e:
        _exit(2, str(e).replace("\n", " "))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _exit(code: int, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    with one_line_errors():
        _main()


def _main() -> None:
    f = flags.FLAGS
    parallel.quiet_library_logs()
    probe_at = f.probe or sweeps.GRIDS.get(f.grid, {}).get("probe", ())
    if f.aggregate_only:
        finish(f.root, probe_at)
        return
    try:
        seq_lens = None if f.seq_lens is None else [int(t) for t in f.seq_lens]
    except ValueError:
        raise ValueError(f"--seq_lens: expected integers, got {f.seq_lens}") from None
    grid = resolve_grid(f.grid, tasks_=f.tasks, cells=f.cells, inits=f.inits,
                        gru_variants=f.gru_variants, seq_lens=seq_lens, steps=f.steps,
                        num_seeds=f.num_seeds, overrides=f.set)
    index, count = shard_from_env(f.shard_index, f.num_shards)
    points = grid_points(grid)
    mine = shard(points, index, count)
    print(f"sweep {f.grid!r}: {len(points)} points; shard {index} of {count} runs {len(mine)} "
          f"of them under {f.root}", flush=True)
    if f.dry_run:
        for p in mine:
            print(f"  {p.name}")
        return
    for p in mine:  # every point's config, before any is recorded
        setup_lib.validate(make_config(grid, p))
    if mine:  # one CPU device per core, for every point this process trains
        parallel.set_cpu_devices(*(make_config(grid, p) for p in mine))
    start = time.time()
    outcome = run_points(grid, mine, f.root)
    print(f"shard {index} of {count}: ran {len(outcome.ran)}, skipped {len(outcome.skipped)}, "
          f"failed {len(outcome.failed)} in {time.time() - start:.0f}s", flush=True)
    if count > 1:
        print(f"sharded run: once every shard is done, write the report with\n"
              f"  python -m experiments.sweep --grid={f.grid} --root={f.root} --aggregate_only")
    else:
        finish(f.root, probe_at)
        print(f"sweep + report + probe: {time.time() - start:.0f}s")
    if outcome.failed:
        raise SystemExit(f"{len(outcome.failed)} point(s) failed: {outcome.failed}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
