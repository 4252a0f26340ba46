"""Training recipes of the papers, as named presets of the task configs.

A recipe is a config-arg token: `--config=experiments/configs/adding.py:tallec,seq_len=750`
(sweeps and the horizon search: `--recipe=tallec`). It sets the optimizer, clipping, sizes and
chrono's T_max as the paper did; the init stays a separate choice (`model.init`), since comparing
inits under one recipe is the point. Sources: `../shared/REFERENCE.md` §4 and §8.

- `tallec` — Tallec & Ollivier 2018, "Can recurrent neural networks warp time?": LSTM-128,
  RMSProp lr 1e-3 (decay 0.9), **no gradient clipping**, batch 50 (their text gives no batch
  size for these tasks); chrono `b_f ~ log U[1, T_max - 1]`, `b_i = -b_f` with T_max = 3T/2 for
  copy and T for adding (and variable-delay copy).
- `arjovsky` — Arjovsky, Shah & Bengio 2016 (the task configs' defaults, restated): RMSProp lr
  1e-3 (decay 0.9), clip 1, copy LSTM-40 at batch 20, adding LSTM-128 at batch 50. The paper
  clipped each gradient element at 1; `train.clip` clips the global norm at 1. A global norm of
  at most 1 bounds every element by 1 too, so ours clips at least as hard; the difference was
  not measured.
"""

from __future__ import annotations

import ml_collections

_SIZES = {"arjovsky": {"copy": (40, 20), "adding": (128, 50)},   # (hidden size, batch size)
          "tallec": {"copy": (128, 50), "adding": (128, 50)}}
_CLIP = {"arjovsky": 1.0, "tallec": 0.0}
RECIPES = tuple(_SIZES)


def apply(c: ml_collections.ConfigDict, name: str) -> None:
    """Sets recipe `name`'s training fields on task config `c` (its optimizer, clip and sizes)."""
    c.train.optimizer = "rmsprop"
    c.train.learning_rate = 1e-3
    c.train.rmsprop_decay = 0.9
    c.train.clip = _CLIP[name]
    c.model.hidden_size, c.train.batch_size = _SIZES[name][c.task.name]


def chrono_max_len(c: ml_collections.ConfigDict, name: str) -> int | None:
    """Chrono's T_max under recipe `name` at `c.seq_len` (None: the task's input length)."""
    if name == "tallec" and c.task.name == "copy" and not c.task.get("variable_delay", False):
        return 3 * c.seq_len // 2
    if name == "tallec":
        return c.seq_len
    return None
