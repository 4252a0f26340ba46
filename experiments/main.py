"""Entry point: train one config in one workdir (the only module that reads flags).

    python -m experiments.main --config=experiments/configs/copy.py --workdir=runs/copy_T100 \
        [--config.seq_len=200 --config.model.cell=gru --config.num_seeds=4 ...]
    python -m experiments.main --config=experiments/configs/copy.py:smoke --workdir=/tmp/x

Rerunning the same command resumes from the workdir's latest checkpoint. The run is finished
when workdir/result.json exists.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Task config file, e.g. experiments/configs/copy.py[:smoke][,seq_len=N].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    train.quiet_orbax_logs()
    try:
        train.make_setup(_CONFIG.value)  # validates: a bad value fails here, before any file
    except ValueError as e:
        raise app.UsageError(f"bad config: {e}") from None
    logging.info("Config:\n%s", _CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
