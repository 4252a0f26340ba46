"""Synthetic long-dependency tasks: data + loss + metrics, as pure functions.

A task is a `Task` of pure functions and sizes. Data is drawn on the device from an explicit
key (the trainer uses `jax.random.fold_in(data_key, step)` for step `step`), so a resumed run
replays the same stream with no iterator state to save.

`TASKS` is the only place a task name appears: `make("copy", seq_len=100)`.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple

import jax

from experiments import checks


class Readout(str, enum.Enum):
    """Where the model's linear readout is applied: every step, or the last step only."""

    ALL = "all"
    LAST = "last"


class Batch(NamedTuple):
    """One batch of a task.

    inputs: [B, T, I] float32 encoded inputs (one-hot symbols for copy, 2 channels for adding).
    targets: copy [B, T] int32 class ids; adding [B] float32 targets.
    """

    inputs: jax.Array
    targets: jax.Array


class Task(NamedTuple):
    """A task: sizes and pure functions (jit- and vmap-safe).

    name: the task's name in `TASKS`.
    seq_len: the task's length parameter T (the delay for copy, the sequence length for adding).
    length: number of input steps per sequence (copy T + 20, adding T).
    input_size: I, features per input step.
    output_size: O, outputs per readout step.
    readout: Readout.ALL (outputs [B, T, O]) or Readout.LAST (outputs [B, O]).
    baseline: loss of the best memoryless predictor, from the task's definition.
    criterion: the `solved` rule in words (written into result.json).
    sample: (key, batch_size) -> Batch.
    loss_and_metrics: (outputs, batch) -> (loss [], metrics {name: []}); metrics include
      "loss", "normalized_loss" (= loss / baseline) and "accuracy".
    solved: metrics -> bool array; elementwise, so it works on per-seed metrics [S] too.
  """

    name: str
    seq_len: int
    length: int
    input_size: int
    output_size: int
    readout: Readout
    baseline: float
    criterion: str
    sample: Callable[[jax.Array, int], Batch]
    loss_and_metrics: Callable[[jax.Array, Batch], tuple[jax.Array, dict]]
    solved: Callable[[dict], Any]


# Imported after Task/Batch exist: the task modules build them.
from experiments.tasks import adding, copy  # noqa: E402

TASKS: dict[str, Callable[..., Task]] = {"copy": copy.make, "adding": adding.make}


def make(name: str, **kwargs: Any) -> Task:
    """Builds task `name` from `TASKS` with its keyword options (seq_len, ...)."""
    checks.one_of("task.name", name, TASKS, "task")
    return TASKS[name](**kwargs)
