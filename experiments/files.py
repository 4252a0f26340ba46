"""The one way every writer in experiments/ replaces a file: `atomic_write`.

A leaf (imports nothing from experiments), shared by the other leaves (`outputs.py`,
`checkpoint.py`) and the analysis on top (`sweep.py`, `report.py`, `probe.py`), which may not
import each other's helpers.
"""

from __future__ import annotations

import os


def atomic_write(path: str, data: str | bytes) -> None:
    """Replaces `path` by `data` atomically: a reader or a crash sees the old file or the new one.

    Writes `<path>.tmp<pid>` (text or bytes), flushes and fsyncs it, then `os.replace`s it over
    `path` (the pid keeps concurrent writers of one path, e.g. sweep shards, apart).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
