"""Entry point: train one config in one workdir (the only module that reads flags).

    python -m experiments.main --config=experiments/configs/copy.py --workdir=runs/copy_T100 \
        [--config.seq_len=200 --config.model.cell=gru --config.num_seeds=4 ...]
    python -m experiments.main --config=experiments/configs/copy.py:smoke --workdir=/tmp/x

Rerunning the same command resumes from the workdir's latest checkpoint. The run is finished
when workdir/result.json exists.

Exit codes: 0 finished; 2 bad config or workdir (one line on stderr, nothing written);
3 non-finite loss/gradients (names the step and the last good checkpoint); 4 a checkpoint save
failed (earlier ones intact); 128 + N stopped by signal N (SIGTERM 143, SIGINT 130) after saving
the current step: rerun the same command to resume.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import checkpoint, parallel, train

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    parallel.quiet_library_logs()
    config = _CONFIG.value
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
    except checkpoint.CheckpointError as e:
        _exit(4, str(e))


if __name__ == "__main__":
    app.run(main)
