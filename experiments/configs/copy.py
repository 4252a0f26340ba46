"""Copy memory task, Arjovsky et al. 2016 protocol: LSTM 40 units, RMSProp lr 1e-3 decay 0.9,
global-norm clip 1, batch 20, T = 100, 20,000 steps.

    python -m experiments.main --config=experiments/configs/copy.py --workdir=runs/copy_T100
    python -m experiments.main --config=experiments/configs/copy.py:seq_len=200 \
        --config.model.init=forget_bias --workdir=runs/copy_T200_fb
    python -m experiments.main --config=experiments/configs/copy.py:smoke --workdir=/tmp/copy_smoke

Arjovsky et al.'s LSTM had a forget bias of 1 (`--config.model.init=forget_bias`); the default
here is the library's plain init so that the init comparison starts from it. Variable delay
(Henaff et al. 2016): `--config.task.variable_delay=True`.

Published: the LSTM beats the baseline 10 ln 8 / (T + 20) only at T = 100; at T >= 200 it stays
at the baseline. The smoke config (T = 5, 16 units, 40 steps) runs in seconds.
"""

from typing import Optional

import ml_collections

from experiments import configs


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
    c = configs.base_config()
    c.task.name = "copy"
    c.task.variable_delay = False
    c.seq_len = 100
    c.model.hidden_size = 40
    c.train.batch_size = 20
    configs.apply_arg(c, arg, smoke_seq_len=5)
    return c
