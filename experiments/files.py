"""The one way every writer in experiments/ replaces a file (`atomic_write`), and the one error a
failed write of a run's outputs becomes (`WriteError`, via `writing`).

A leaf (imports nothing from experiments), shared by the other leaves (`outputs.py`,
`checkpoint.py`) and the analysis on top (`sweep.py`, `report.py`, `probe.py`), which may not
import each other's helpers.
"""

from __future__ import annotations

import contextlib
import errno
import os


class WriteError(OSError):
    """Writing one of a run's outputs failed (a full disk, a quota): one line naming the file.

    `experiments.main` exits 4 with it; what was written before is intact, so freeing space and
    rerunning the same command resumes the run.
    """

    def __init__(self, path: str, error: OSError):
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        what = "disk full" if full else f"{error.strerror or type(error).__name__}"
        remedy = "free space" if full else "fix that"
        super().__init__(error.errno, f"{what} while writing {path}; {remedy} and rerun the same "
                                      f"command to resume")

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def writing(path: str):
    """Turns an OSError raised inside the block into a WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e) from e


def atomic_write(path: str, data: str | bytes) -> None:
    """Replaces `path` by `data` atomically: a reader or a crash sees the old file or the new one.

    Writes `<path>.tmp<pid>` (text or bytes), flushes and fsyncs it, then `os.replace`s it over
    `path` (the pid keeps concurrent writers of one path, e.g. sweep shards, apart). A failure
    (e.g. a full disk) removes the tmp file and raises WriteError naming `path`.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with writing(path):
        try:
            with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
