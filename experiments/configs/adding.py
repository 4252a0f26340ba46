"""Adding problem, Arjovsky et al. 2016 form: LSTM 128 units, RMSProp lr 1e-3 decay 0.9,
global-norm clip 1, batch 50, T = 100, 20,000 steps.

    python -m experiments.main --config=experiments/configs/adding.py --workdir=runs/adding_T100
    python -m experiments.main --config=experiments/configs/adding.py:seq_len=400 \
        --workdir=runs/adding_T400
    python -m experiments.main --config=experiments/configs/adding.py:smoke --workdir=/tmp/add_smoke

Hochreiter & Schmidhuber's form: `--config.task.form=hochreiter`.

Published: the LSTM beats the baseline MSE 0.167 convincingly up to T = 400. The smoke config
(T = 10, 16 units, 40 steps) runs in seconds.
"""

from typing import Optional

import ml_collections

from experiments import configs


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
    c = configs.base_config()
    c.task.name = "adding"
    c.task.form = "arjovsky"
    c.seq_len = 100
    c.model.hidden_size = 128
    c.train.batch_size = 50
    configs.apply_arg(c, arg, smoke_seq_len=10)
    return c
