"""Entry point: train one config in one workdir (the only module that reads flags).

    python -m experiments.main --config=experiments/configs/copy.py --workdir=runs/copy_T100 \
        [--config.seq_len=200 --config.model.cell=gru --config.num_seeds=4 ...]
    python -m experiments.main --config=experiments/configs/copy.py:smoke --workdir=/tmp/x

Rerunning the same command resumes from the workdir's latest checkpoint. The run is finished
when workdir/result.json exists.

Exit codes: 0 finished; 2 bad config, config file, command line or workdir, a workdir in use
by another process, a run too large for memory or disk, a damaged file (one line on stderr,
naming it; nothing written); 3 non-finite loss/gradients (names the step, the last good
checkpoint and what to do); 4 a checkpoint or output write failed, e.g. a full disk (earlier
checkpoints intact: free space and rerun the same command); 128 + N stopped by signal N
(SIGTERM 143, SIGINT 130) after saving the current step: rerun the same command to resume.
"""

import difflib
import importlib.util
import os
import re
import sys
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from experiments import checkpoint, configs, files, parallel, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Task config file, e.g. experiments/configs/copy.py[:smoke][,seq_len=N].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_FRESH_START = flags.DEFINE_bool(
    "fresh_start", False, "Start over even if the workdir holds checkpoints of another config "
    "(the old run is moved to workdir/previous_<k>/); same as --config.train.fresh_start=True.")
flags.mark_flags_as_required(["config", "workdir"])


def _exit(code: int, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _config_value(argv: list[str]) -> Optional[str]:
    """The value of --config in argv, or None."""
    for i, arg in enumerate(argv):
        if m := re.match(r"^--?config(=(.*))?$", arg):
            return m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def config_file_error(argv: list[str]) -> Optional[str]:
    """One line if --config names a file that does not exist or does not parse; else None."""
    value = _config_value(argv)
    if value is None:
        return None
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
        return f"--config={value}: no such file {path!r}"
    try:
        with open(path) as f:
            compile(f.read(), path, "exec")
    except SyntaxError as e:
        return f"--config={value}: syntax error in {path}, line {e.lineno}: {e.msg}"
    except (OSError, ValueError) as e:
        return f"--config={value}: cannot read {path} ({e})"
    return None


def unknown_field_error(argv: list[str]) -> Optional[str]:
    """One line naming the first `--config.<field>` override that is no field of the config,
    with the close matches (difflib); None if every override names a field."""
    value = _config_value(argv)
    if value is None:
        return None
    path, _, arg = value.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*([arg] if arg else []))
    except Exception:  # noqa: BLE001 - the file's own error is reported by the caller
        return None
    names = list(checkpoint.flatten(config.to_dict()))
    sections = {n.rsplit(".", 1)[0] for n in names if "." in n}
    for field in _override_fields(argv):
        if field in names or field in sections:
            continue
        close = difflib.get_close_matches(field, names, n=3, cutoff=0.6)
        parent = field.rsplit(".", 1)[0] if "." in field else ""
        siblings = [n for n in names if n.rsplit(".", 1)[0] == parent] if "." in field else \
            [n for n in names if "." not in n]
        hint = (f"did you mean {', '.join('--config.' + c for c in close)}?" if close else
                f"fields of {parent or 'the config'}: {', '.join(sorted(siblings)) or 'none'}")
        return f"--config.{field}: unknown config field; {hint}"
    return None


def _override_fields(argv: list[str]) -> list[str]:
    """The dotted config fields that `--config.<field>` flags in argv set, in their order."""
    return [m.group(1) for token in argv
            if (m := re.match(r"^--?(?:no)?config\.([^=]+)", token))]


def overridden_fields(argv: list[str]) -> set[str]:
    """The dotted config fields that `--config.<field>` flags in argv set."""
    return set(_override_fields(argv))


def parse_flags(argv: list[str]) -> list[str]:
    """`app.run`'s flags parser: a bad --config file, an unknown `--config.<field>` or a value of
    the wrong type exits 2 with one line instead of a traceback."""
    if message := config_file_error(argv):
        _exit(2, message)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ConfigDict's "no such field"
        _exit(2, unknown_field_error(argv) or str(e).replace("\n", " "))
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        _exit(2, lines[-1] if lines else type(e).__name__)
    except Exception as e:  # noqa: BLE001 - the config file's get_config raised
        _exit(2, f"--config={_config_value(argv)}: {type(e).__name__}: {e}".replace("\n", " "))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    parallel.quiet_library_logs()
    config = _CONFIG.value
    # What the config arg's recipe derived (chrono's T_max) follows --config.seq_len & co.
    configs.rederive(config, (_config_value(sys.argv) or "").partition(":")[2],
                     overridden_fields(sys.argv))
    if _FRESH_START.value:
        with config.unlocked():
            config.train.fresh_start = True
    try:
        parallel.set_cpu_devices(config)  # one CPU device per core: before JAX starts
        # Validates the config (setup.build) before anything is compiled or written.
        train.train_and_evaluate(config, _WORKDIR.value)
    except checkpoint.Stopped as e:
        _exit(e.code, str(e))
    except (checkpoint.WorkdirError, ValueError) as e:
        _exit(2, str(e).replace("\n", " "))
    except FloatingPointError as e:
        _exit(3, str(e))
    except (checkpoint.CheckpointError, files.WriteError) as e:
        _exit(4, str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
