"""Pins experiments/setup.py's validation (`setup.validate`): each bad config value gets one line
naming the flag, the value and what is allowed; the shipped configs pass; `python -m
experiments.main` exits non-zero with that line and writes nothing; a missing or broken
--config file and an unknown `--config.<field>` (with its close matches) are one line, exit 2."""

import os
import subprocess
import sys

import jax
import pytest
from absl.testing import flagsaver
from unittest import mock

from experiments import main as main_lib
from experiments import parallel
from experiments import setup as setup_lib
from experiments.configs import adding as adding_config
from experiments.configs import copy as copy_config
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BAD = [
    ("copy", {"seq_len": 0}, r"^--config\.seq_len: expected an integer >= 1, got 0$"),
    ("copy", {"num_seeds": 0}, r"^--config\.num_seeds: expected an integer >= 1, got 0$"),
    ("copy", {"seed": -1}, r"^--config\.seed: expected an integer >= 0, got -1$"),
    ("copy", {"seed": 2**32}, r"^--config\.seed: expected an integer in \[0, 4294967295\], got "
                              r"4294967296$"),
    ("copy", {"model.hidden_size": -4}, r"^--config\.model\.hidden_size: .*>= 1, got -4$"),
    ("copy", {"model.num_layers": 0}, r"^--config\.model\.num_layers: .*>= 1, got 0$"),
    ("copy", {"train.steps": 0}, r"^--config\.train\.steps: .*>= 1, got 0$"),
    ("copy", {"train.batch_size": 0}, r"^--config\.train\.batch_size: .*>= 1, got 0$"),
    ("copy", {"eval.batch_size": -1}, r"^--config\.eval\.batch_size: .*>= 1, got -1$"),
    ("copy", {"train.log_every": 0}, r"^--config\.train\.log_every: .*>= 1, got 0$"),
    ("copy", {"eval.seq_lens": (10, 0)}, r"^--config\.eval\.seq_lens: .*integers >= 1.*\(10, 0\)"),
    ("copy", {"model.cell": "lstn"},
     r"^--config\.model\.cell: unknown value 'lstn'; valid: 'gru', 'irnn', 'lstm', 'mingru', "
     r"'minlstm', 'rnn', 'urlstm'$"),
    ("copy", {"model.init": "xavier"},
     r"^--config\.model\.init: unknown value 'xavier'; valid: 'chrono', 'default', "
     r"'forget_bias', 'torch'$"),
    ("copy", {"model.gru_variant": "sideways"},
     r"^--config\.model\.gru_variant: unknown value 'sideways'; valid: 'reset_after', "
     r"'reset_before'$"),
    ("copy", {"task.name": "copying"},
     r"^--config\.task\.name: unknown task 'copying'; valid: 'adding', 'copy'$"),
    ("copy", {"train.optimizer": "sgd"},
     r"^--config\.train\.optimizer: unknown 'sgd'; valid: 'adam', 'rmsprop'$"),
    ("copy", {"train.schedule": "linear"},
     r"^--config\.train\.schedule: unknown 'linear'; valid: 'constant', 'cosine'$"),
    ("copy", {"train.learning_rate": 0.0},
     r"^--config\.train\.learning_rate: expected > 0, got 0\.0$"),
    ("copy", {"train.learning_rate": -1e-3}, r"^--config\.train\.learning_rate: .*got -0\.001$"),
    ("copy", {"train.learning_rate": float("nan")}, r"^--config\.train\.learning_rate: .*nan$"),
    ("copy", {"train.clip": -1.0}, r"^--config\.train\.clip: expected >= 0 .*got -1\.0$"),
    ("copy", {"train.rmsprop_decay": 1.0}, r"^--config\.train\.rmsprop_decay: .*\[0, 1\).*1\.0$"),
    ("copy", {"model.cell": "rnn", "model.init": "chrono"},
     r"^--config\.model\.init: has no effect for cell 'rnn'.*got 'chrono'$"),
    ("copy", {"model.gru_variant": "reset_before"},
     r"^--config\.model\.gru_variant: only applies to cell 'gru' \(cell is 'lstm'\)"),
    ("copy", {"train.warmup_steps": 40}, r"^--config\.train\.warmup_steps: expected < "
                                         r"train\.steps=40, got 40$"),
    ("copy", {"train.checkpoint_every": 15},
     r"^--config\.train\.checkpoint_every: expected a multiple of train\.log_every=10, got 15$"),
    ("adding", {"task.variable_delay": True},
     r"^--config\.task\.variable_delay: not an option of task 'adding'; valid: \['form'\]"),
    ("adding", {"task.form": "hochreiter", "seq_len": 5},
     r"^--config\.seq_len: expected an integer >= 6, got 5$"),
    ("adding", {"task.form": "sum"}, r"^--config\.task\.form: unknown adding form 'sum'"),
    ("adding", {"eval.seq_lens": (1,)}, r"^--config\.eval\.seq_lens: expected an integer >= 2"),
]


@pytest.mark.parametrize("task,overrides,message", BAD,
                         ids=[",".join(f"{k}={v}" for k, v in o.items()) for _, o, _ in BAD])
def test_bad_value_is_named_in_one_line(task, overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        setup_lib.validate(helpers.smoke_config(task, **overrides))
    assert "\n" not in str(info.value)


def test_batch_not_divisible_by_devices():
    """Checked against the mesh actually used (parallel.make_layout), before compiling."""
    config = helpers.smoke_config()
    with config.unlocked():
        config.train.batch_size = 7
        config.parallel.num_devices = 1
    parallel.make_layout(config)  # 7 % 1 == 0
    devices = jax.devices()
    fake = [devices[0]] * 3
    with mock.patch.object(jax, "devices", lambda: fake):
        with pytest.raises(ValueError, match=r"train\.batch_size=7 is not divisible by the 3 "
                                             r"devices"):
            with config.unlocked():
                config.parallel.num_devices = 0
            parallel.make_layout(config)


@pytest.mark.parametrize("arg", ["smoke", None, "seq_len=200"])
@pytest.mark.parametrize("module", [copy_config, adding_config])
def test_shipped_configs_pass(module, arg):
    setup_lib.validate(module.get_config(arg))


def test_main_exits_with_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--config=experiments/configs/copy.py:smoke",
         f"--workdir={workdir}", "--config.train.learning_rate=-0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: --config.train.learning_rate: expected > 0, got -0.5"], proc.stderr
    assert not workdir.exists()
    assert os.listdir(tmp_path) == []


SMOKE = "--config=experiments/configs/copy.py:smoke"


@pytest.mark.parametrize("args, line", [
    ([SMOKE, "--config.train.stepz=5"],
     "error: --config.train.stepz: unknown config field; did you mean --config.train.steps, "
     "--config.train.eps, --config.train.warmup_steps?"),
    ([SMOKE, "--config.task.form=x"],
     "error: --config.task.form: unknown config field; did you mean --config.task.name?"),
    (["--config=experiments/configs/nope.py"],
     "error: --config=experiments/configs/nope.py: no such file 'experiments/configs/nope.py'"),
    (["--config=BROKEN"], "error: --config=BROKEN: syntax error in BROKEN, line 2: invalid "
                          "syntax"),
    ([SMOKE, "--config.seed=abc"],
     "error: flag --config.seed=abc: invalid literal for int() with base 10: 'abc'")])
def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys, args, line):
    """Issue 14: these were 40-55 line tracebacks, exit 1."""
    broken = tmp_path / "broken.py"
    broken.write_text("import ml_collections\ndef get_config(:\n")
    argv = ["main"] + [a.replace("BROKEN", str(broken)) for a in args] + [
        f"--workdir={tmp_path / 'run'}"]
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as info:
        main_lib.parse_flags(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line.replace("BROKEN", str(broken))]
    assert os.listdir(tmp_path) == ["broken.py"]
