"""What a training run writes into its workdir (used by `experiments/train.py`).

`MetricsLog` writes metrics.jsonl, one JSON object per line for each logged (step, split):
{"step": int, "split": "train" | "eval" | "eval_T<L>", <metric>: mean over the S seeds, ...,
extra fields such as "seq_len", "steps_per_sec", "wall_time_s" (a non-finite one as null),
"per_seed": {<metric>: [S] list}}, and the same curves as TensorBoard scalars under tb/
("<split>/<metric>", plus "<split>/<metric>/seed_<s>" when S > 1); `result` builds the dict of
result.json (task, model, final eval and first solved step of each seed, the whole config), which
train.py writes, like config.json, as indented JSON with `files.atomic_write` (fsynced, then
renamed over the old file, so a reader or a crash sees the old file or the whole new one, never
part of one); metrics.jsonl is rewritten that way when a run (re)starts, keeping only the rows
up to the restored step (a partly written last row is dropped with a warning; any other bad row
is an error naming the file and line), then appended to a flushed row at a time. A failed write
is a `files.WriteError` naming the file. `Clock` measures the timing
fields (`wall_time_s` across resumes, `steps_per_sec` without compilation, evals and saves).

A leaf: imports nothing from experiments but `files`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
import tensorboardX
from absl import logging

from experiments import files

EVAL = "eval"  # the split of the evaluation at the training length


def read_rows(path: str) -> list[dict]:
    """The rows of a JSON-lines file ([] if it does not exist), blank lines skipped.

    An unparsable LAST line is what an interrupted write leaves (a full disk, a file size
    limit): it is dropped with a warning (the resumed run writes that row again). Any other bad
    line raises ValueError naming the file, the line and what to do.
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(numbered):
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            if i == len(numbered) - 1:
                logging.warning("%s, line %d: dropping a partly written last row (%s).", path, n,
                                e)
                break
            raise ValueError(f"{path}, line {n}: not a JSON row ({e}); delete that line (the "
                             f"rows after it stay usable) or rerun with --fresh_start") from None
    return rows


def _to_json(value: Any) -> Any:
    """[S] array (or scalar) -> a JSON-ready list (or number); booleans as Python bools."""
    value = np.asarray(value)
    return value.tolist() if value.dtype != np.bool_ else [bool(v) for v in value.ravel()]


class MetricsLog:
    """metrics.jsonl + TensorBoard; on resume keeps only the rows up to the restored step.

    With write_files=False (processes other than 0) it keeps the rows in memory only.
    """

    def __init__(self, workdir: str, start_step: int, seeds: list[int], write_files: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.rows = [r for r in read_rows(self.path) if r["step"] <= start_step]
        self.file = self.tb = None
        if not write_files:
            return
        files.atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.tb_dir = os.path.join(workdir, "tb")
        with files.writing(self.path):
            self.file = open(self.path, "a")
        self.seeds = seeds
        # purge_step drops TensorBoard events past the restored step, as for the jsonl rows.
        with files.writing(self.tb_dir):
            self.tb = tensorboardX.SummaryWriter(self.tb_dir, purge_step=start_step + 1
                                                 if start_step else None)

    def write(self, step: int, split: str, metrics: dict[str, np.ndarray], **extra: Any) -> dict:
        """Writes one row: means over seeds at the top level, every seed under "per_seed".

        Args:
          step: the step the metrics belong to.
          split: "train", "eval" or "eval_T<L>".
          metrics: {name: [S]} per-seed values ("solved": [S] bool, kept only under per_seed).
          **extra: more top-level fields (a non-finite float is written as null).

        Returns:
          The row as written (also appended to `self.rows`).
        """
        row = {"step": step, "split": split}
        for name, values in metrics.items():
            if name != "solved":
                row[name] = float(np.mean(values))
        row.update({k: None if isinstance(v, float) and not math.isfinite(v) else v
                    for k, v in extra.items()})
        row["per_seed"] = {name: _to_json(values) for name, values in metrics.items()}
        self.rows.append(row)
        if self.file is None:
            return row
        with files.writing(self.path):
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        with files.writing(self.tb_dir):
            for name, values in metrics.items():
                self.tb.add_scalar(f"{split}/{name}", float(np.mean(values)), step)
                if len(self.seeds) > 1:
                    for seed, v in zip(self.seeds, np.asarray(values, np.float64)):
                        self.tb.add_scalar(f"{split}/{name}/seed_{seed}", float(v), step)
        return row

    def close(self) -> None:
        """Closes both files; raises a WriteError only after trying both (the first one)."""
        errors = []
        for path, f in ((self.path, self.file), (getattr(self, "tb_dir", ""), self.tb)):
            if f is None:
                continue
            try:
                with files.writing(path):
                    f.close()
            except files.WriteError as e:
                errors.append(e)
        self.file = self.tb = None
        if errors:
            raise errors[0]


def result(config: dict[str, Any], task: Any, rows: list[dict], seeds: list[int]) -> dict:
    """result.json's content from the logged eval rows (the last one is the final eval).

    Args:
      config: the run's config as plain data (`ConfigDict.to_dict()`), recorded whole.
      task: the training task (a `tasks.Task`: its name, baseline and solved criterion are
        recorded).
      rows: `MetricsLog.rows`, ending with the final eval.
      seeds: the S seeds, in the order of the per-seed lists.

    Returns:
      A JSON-ready dict; "final_step" and "stopped" ("solved" or "budget") say where and why the
      run ended; "seeds" holds S dicts (final eval loss, normalized_loss, accuracy,
      solved, and steps_to_solve: the first eval step it was solved at, or None).
    """
    evals = [r for r in rows if r["split"] == EVAL]
    final = evals[-1]["per_seed"]
    per_seed = []
    for i, seed in enumerate(seeds):
        solved_at = [r["step"] for r in evals if r["per_seed"]["solved"][i]]
        per_seed.append({"seed": seed, "loss": final["loss"][i],
                         "normalized_loss": final["normalized_loss"][i],
                         "accuracy": final["accuracy"][i], "solved": final["solved"][i],
                         "steps_to_solve": solved_at[0] if solved_at else None})
    m, steps = config["model"], config["train"]["steps"]
    return {
        "task": task.name, "seq_len": config["seq_len"], "cell": m["cell"],
        "gru_variant": m["gru_variant"], "init": m["init"], "hidden_size": m["hidden_size"],
        "num_layers": m["num_layers"], "baseline": task.baseline,
        "solved_criterion": task.criterion, "steps": steps,
        # The step the run ended at, and why: "solved" (train.stop_when_solved, every seed
        # solved at that eval) or "budget" (train.steps taken).
        "final_step": evals[-1]["step"],
        "stopped": "solved" if evals[-1]["step"] < steps else "budget",
        "num_seeds": config["num_seeds"], "seeds": per_seed,
        "solved_fraction": float(np.mean([s["solved"] for s in per_seed])),
        "wall_time_s": rows[-1]["wall_time_s"], "steps_per_sec": evals[-1]["steps_per_sec"],
        "extra_evals": {r["split"]: {k: r["per_seed"][k] for k in
                                     ("loss", "normalized_loss", "accuracy", "solved")}
                        for r in rows if r["split"].startswith("eval_T")
                        and r["step"] == evals[-1]["step"]},
        "config": config,
    }


# ---------------------------------------------------------------------------------------------
# Timing fields of the rows (wall_time_s, steps_per_sec) and the progress line's ETA.

def format_eta(seconds: float) -> str:
    """`h:mm:ss`, or "?" for an unknown (non-finite) time."""
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class Clock:
    """Wall time across resumes, and steps/s between logs without compilation, evals and saves."""

    def __init__(self, start_step: int, wall_offset: float):
        self.t0, self.offset = time.time(), wall_offset
        self.mark_time, self.mark_step, self.paused_s = None, start_step, 0.0
        self.rate, self.last_report = float("nan"), 0.0

    def wall(self) -> float:
        return self.offset + time.time() - self.t0

    def first_step(self, step: int, metrics: Any) -> None:
        if self.mark_time is None:
            jax.block_until_ready(metrics)
            self.mark_time, self.mark_step = time.time(), step
            logging.info("First step (with compilation) took %.1f s.", self.mark_time - self.t0)

    def lap(self, step: int) -> float:
        now = time.time()
        if step > self.mark_step:
            self.rate = (step - self.mark_step) / max(now - self.mark_time - self.paused_s, 1e-9)
        self.mark_time, self.mark_step, self.paused_s = now, step, 0.0
        return self.rate

    @contextlib.contextmanager
    def paused(self):
        t = time.time()
        yield
        self.paused_s += time.time() - t

    def report_due(self, every_secs: float) -> bool:
        if time.time() - self.last_report < every_secs:
            return False
        self.last_report = time.time()
        return True
