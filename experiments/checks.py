"""The two value checks every boundary uses: an integer >= k, and one name among valid ones.

A leaf (imports nothing from experiments), so that the task constructors (`tasks/`), the config
boundary (`setup.py`) and the sweep's command line (`sweep.py`) raise the same one-line
messages:

    <label>: expected an integer >= 1, got 0
    <label>: unknown value 'lstn'; valid: 'gru', 'lstm', 'rnn'

`label` is what the user typed: `--config.seq_len` (setup), `seq_len` (a task), `--cells`
(sweep).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def is_int(value: Any) -> bool:
    """Whether `value` is an integer (a Python or NumPy int; not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def integer(label: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """Returns `value` as an int if it is an integer >= minimum (and <= maximum, if given).

    Raises:
      ValueError: `<label>: expected an integer >= <minimum>, got <value!r>` (or `an integer in
        [<minimum>, <maximum>]`).
    """
    if not is_int(value) or value < minimum or maximum is not None and value > maximum:
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{label}: expected an integer {allowed}, got {value!r}")
    return int(value)


def one_of(label: str, value: Any, valid: Iterable[Any], what: str = "value") -> Any:
    """Returns `value` if it is one of `valid` (e.g. an enum's values, a dict's keys).

    Raises:
      ValueError: `<label>: unknown <what> <value!r>; valid: 'a', 'b'` (sorted; `what=""`
        leaves the word out).
    """
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"{label}: unknown {what + ' ' if what else ''}{value!r}; valid: "
                         f"{', '.join(repr(v) for v in sorted(valid))}")
    return value
