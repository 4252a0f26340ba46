"""What a training run writes into its workdir (used by `experiments/train.py`).

`MetricsLog` writes metrics.jsonl, one JSON object per line for each logged (step, split):
{"step": int, "split": "train" | "eval" | "eval_T<L>", <metric>: mean over the S seeds, ...,
extra fields such as "seq_len", "steps_per_sec", "wall_time_s" (a non-finite one as null),
"per_seed": {<metric>: [S] list}}, and the same curves as TensorBoard scalars under tb/
("<split>/<metric>", plus "<split>/<metric>/seed_<s>" when S > 1); `result` builds the dict of
result.json (task, model, final eval and first solved step of each seed, the whole config), which
train.py writes, like config.json, as indented JSON with `atomic_write`. `atomic_write` writes
`<path>.tmp`, flushes and fsyncs it and renames it over `path`, so a reader or a crash sees the
old file or the whole new one, never part of one; metrics.jsonl is rewritten that way when a run
(re)starts, keeping only the rows up to the restored step, then appended to a flushed row at a
time.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections
import numpy as np
import tensorboardX

from experiments import tasks

EVAL = "eval"  # the split of the evaluation at the training length


def atomic_write(path: str, text: str) -> None:
    """Replaces `path` by `text` atomically (via `<path>.tmp`, fsynced, then `os.replace`)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_rows(path: str) -> list[dict]:
    """The rows of a JSON-lines file ([] if it does not exist), blank lines skipped."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
        self.rows = [r for r in _read_rows(self.path) if r["step"] <= start_step]
        self.file = self.tb = None
        if not write_files:
            return
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.file = open(self.path, "a")
        self.seeds = seeds
        # purge_step drops TensorBoard events past the restored step, as for the jsonl rows.
        self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"),
                                             purge_step=start_step + 1 if start_step else None)

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
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for name, values in metrics.items():
            self.tb.add_scalar(f"{split}/{name}", float(np.mean(values)), step)
            if len(self.seeds) > 1:
                for seed, v in zip(self.seeds, np.asarray(values, np.float64)):
                    self.tb.add_scalar(f"{split}/{name}/seed_{seed}", float(v), step)
        return row

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.tb.close()


def result(config: ml_collections.ConfigDict, task: tasks.Task, rows: list[dict],
           seeds: list[int]) -> dict:
    """result.json's content from the logged eval rows (the last one is the final eval).

    Args:
      config: the run's config.
      task: the training task (its name, baseline and solved criterion are recorded).
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
    m = config.model
    return {
        "task": task.name, "seq_len": config.seq_len, "cell": m.cell,
        "gru_variant": m.gru_variant, "init": m.init, "hidden_size": m.hidden_size,
        "num_layers": m.num_layers, "baseline": task.baseline,
        "solved_criterion": task.criterion, "steps": config.train.steps,
        # The step the run ended at, and why: "solved" (train.stop_when_solved, every seed
        # solved at that eval) or "budget" (train.steps taken).
        "final_step": evals[-1]["step"],
        "stopped": "solved" if evals[-1]["step"] < config.train.steps else "budget",
        "num_seeds": config.num_seeds, "seeds": per_seed,
        "solved_fraction": float(np.mean([s["solved"] for s in per_seed])),
        "wall_time_s": rows[-1]["wall_time_s"], "steps_per_sec": evals[-1]["steps_per_sec"],
        "extra_evals": {r["split"]: {k: r["per_seed"][k] for k in
                                     ("loss", "normalized_loss", "accuracy", "solved")}
                        for r in rows if r["split"].startswith("eval_T")
                        and r["step"] == evals[-1]["step"]},
        "config": config.to_dict(),
    }
