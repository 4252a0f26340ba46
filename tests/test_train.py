"""Pins the trainer: the first steps against golden numbers and against NumPy (model forward,
clip + RMSProp update), a short run lowers the loss and writes its files, an interrupted run
resumed in the same workdir ends bitwise equal to an uninterrupted one, vmapped seeds equal
separate runs, the train step compiles once, bad configs and NaNs stop with clear errors.

Golden numbers (tests/golden/train_{copy,adding}.json): regenerate with
    GATED_RNN_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_train.py -k golden
only when a change is *meant* to alter the training numbers (init, data sampling, model, loss or
optimizer defaults, the smoke config) and the NumPy checks in this file still pass; say why in
the commit. Never to make a failing test pass without knowing why it failed.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import model as model_lib
from experiments import setup as setup_lib
from experiments import train
from experiments.configs import adding as adding_config
from experiments.configs import copy as copy_config
from tests import helpers

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
REGEN = os.environ.get("GATED_RNN_REGEN_GOLDEN") == "1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(setup, state, n):
    losses = []
    for _ in range(n):
        state, metrics = train.train_step(setup, state, train.sample_batch(setup, state))
        losses.append(metrics)
    return state, jax.device_get(losses)


def _first_seed(tree):
    return jax.tree.map(lambda x: np.asarray(x)[0], tree)


# --- one step: golden numbers and independent NumPy checks ---------------------------------

@pytest.mark.parametrize("task", ["copy", "adding"])
def test_first_steps_match_golden(task):
    setup = setup_lib.build(helpers.smoke_config(task))
    state = train.create_train_state(setup, seed=0)
    _, metrics = _steps(setup, state, 3)
    got = {"loss": [float(m["loss"][0]) for m in metrics],
           "grad_norm": [float(m["grad_norm"][0]) for m in metrics]}
    path = os.path.join(GOLDEN_DIR, f"train_{task}.json")
    if REGEN:
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"what": f"{task} smoke config, seed 0: loss and grad norm of train "
                               "steps 1-3 (see tests/test_train.py for when to regenerate)",
                       **got}, f, indent=2)
    with open(path) as f:
        golden = json.load(f)
    np.testing.assert_allclose(got["loss"], golden["loss"], rtol=2e-5,
                               err_msg="train losses moved: see the module doc before updating")
    np.testing.assert_allclose(got["grad_norm"], golden["grad_norm"], rtol=2e-5)


def _np_lstm_adding_loss(params, inputs, targets):
    """MSE of inputs -> LSTM (gates i, f, g, o) -> readout at the last step, in NumPy float64."""
    (cell,), = params["rnn"]
    w_x, w_h, b = (np.asarray(a, np.float64) for a in (cell.w_x, cell.w_h, cell.b))
    w_o, b_o = (np.asarray(params["readout"][k], np.float64) for k in ("w", "b"))
    sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    h = c = np.zeros((inputs.shape[0], w_h.shape[0]))
    for t in range(inputs.shape[1]):
        i, f, g, o = np.split(inputs[:, t] @ w_x + h @ w_h + b, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
    return np.mean(((h @ w_o + b_o)[:, 0] - targets) ** 2)


def test_first_step_against_numpy():
    """Step 1's loss equals a NumPy forward on the batch of fold_in(data_key, 0); the update is
    clip_by_global_norm(1) then RMSProp(lr 1e-3, decay 0.9, eps 1e-8, nu_0 = 0)."""
    config = helpers.smoke_config("adding")
    setup = setup_lib.build(config)
    state = train.create_train_state(setup, seed=0)
    new_state, metrics = train.train_step(setup, state, train.sample_batch(setup, state))
    one = _first_seed(state)
    key = jax.random.fold_in(jax.random.wrap_key_data(one.data_key), 0)
    batch = jax.jit(setup.task.sample, static_argnums=1)(key, config.train.batch_size)
    expected = _np_lstm_adding_loss(one.params, np.asarray(batch.inputs, np.float64),
                                    np.asarray(batch.targets, np.float64))
    np.testing.assert_allclose(metrics["loss"][0], expected, rtol=1e-5)

    grads = jax.jit(jax.grad(lambda p: train.loss_fn(setup, p, batch)[0]))(one.params)
    g = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
    norm = np.sqrt(sum((x**2).sum() for x in g))
    assert norm > 1.0  # clipping is active
    np.testing.assert_allclose(metrics["grad_norm"][0], norm, rtol=1e-5)
    expected_params = []
    for p, x in zip(jax.tree.leaves(one.params), g):
        x = x / norm
        nu = 0.1 * x**2
        expected_params.append(np.asarray(p, np.float64) - 1e-3 * x / np.sqrt(nu + 1e-8))
    for got, want in zip(jax.tree.leaves(_first_seed(new_state).params), expected_params):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert int(new_state.step[0]) == 1


# --- whole runs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One uninterrupted copy smoke run (40 steps, checkpoints at 20 and 40)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    config = helpers.smoke_config("copy")
    state = train.train_and_evaluate(config, workdir)
    return config, workdir, state


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("steps_per_sec", "wall_time_s")}
            for r in rows]


def test_short_run_lowers_loss_and_writes_outputs(smoke_run):
    config, workdir, state = smoke_run
    setup = setup_lib.build(config)
    initial = train.evaluate(setup, train.create_train_state(setup, config.seed))["eval"].metrics
    with open(os.path.join(workdir, "result.json")) as f:
        result = json.load(f)
    final = result["seeds"][0]
    assert final["loss"] < 0.9 * float(initial["loss"][0])
    assert int(state.step[0]) == config.train.steps

    rows = _rows(workdir)
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    eval_steps = [r["step"] for r in rows if r["split"] == "eval"]
    assert train_steps == [10, 20, 30, 40] and eval_steps == [20, 40]
    for r in rows:
        assert {"loss", "normalized_loss", "accuracy", "steps_per_sec", "per_seed"} <= set(r)
        assert r["normalized_loss"] == pytest.approx(r["loss"] / setup.task.baseline, rel=1e-5)
    last_eval = [r for r in rows if r["split"] == "eval"][-1]
    assert final["loss"] == last_eval["per_seed"]["loss"][0]
    assert set(result) >= {"task", "seq_len", "cell", "gru_variant", "init", "hidden_size",
                           "num_layers", "baseline", "solved_criterion", "steps", "num_seeds",
                           "seeds", "solved_fraction", "wall_time_s", "config"}
    assert result["task"] == "copy" and result["seq_len"] == 5
    assert result["config"] == json.loads(json.dumps(config.to_dict()))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "40"]
    assert any(name.startswith("events.out.tfevents") for name in
               os.listdir(os.path.join(workdir, "tb")))


def test_stop_when_solved_ends_at_the_first_eval_with_every_seed_solved(tmp_path):
    """Two seeds of adding T=10 are both solved first at step 200 (eval every 20): the run stops
    there, its rows equal those of a run without the option up to that step (bitwise, timing
    aside), steps_to_solve is exact, and a rerun trains no further and writes the same result."""
    values = {"train.learning_rate": 0.01, "model.hidden_size": 32, "train.eval_every": 20,
              "num_seeds": 2, "eval.batch_size": 64, "train.checkpoint_every": 100}
    stopping = helpers.smoke_config("adding", **values, **{"train.steps": 400,
                                                          "train.stop_when_solved": True})
    full = helpers.smoke_config("adding", **values, **{"train.steps": 260})
    stop_dir, full_dir = str(tmp_path / "stop"), str(tmp_path / "full")
    state = train.train_and_evaluate(stopping, stop_dir)
    train.train_and_evaluate(full, full_dir)

    full_rows = _rows(full_dir)
    evals = [r for r in full_rows if r["split"] == "eval"]
    first_all = next(r["step"] for r in evals if all(r["per_seed"]["solved"]))
    assert first_all == 200 < stopping.train.steps  # the premise of this test
    assert int(state.step[0]) == first_all
    assert _without_timing(_rows(stop_dir)) == _without_timing(
        [r for r in full_rows if r["step"] <= first_all])
    with open(os.path.join(stop_dir, "result.json")) as f:
        result = json.load(f)
    assert (result["stopped"], result["final_step"], result["steps"]) == ("solved", 200, 400)
    assert [s["steps_to_solve"] for s in result["seeds"]] == [
        next(r["step"] for r in evals if r["per_seed"]["solved"][i]) for i in range(2)]
    with open(os.path.join(full_dir, "result.json")) as f:
        assert (json.load(f)["stopped"]) == "budget"
    assert sorted(os.listdir(os.path.join(stop_dir, "checkpoints")))[-1] == "200"

    rows_before = _rows(stop_dir)
    state = train.train_and_evaluate(stopping, stop_dir)  # rerun: nothing left to train
    assert int(state.step[0]) == 200 and _rows(stop_dir) == rows_before
    with open(os.path.join(stop_dir, "result.json")) as f:
        assert json.load(f) == result


class _Interrupt(Exception):
    pass


def test_resume_is_bitwise_equal_to_uninterrupted(smoke_run, tmp_path, monkeypatch):
    """Killed at step 30 (after the checkpoint at 20 and the log at 30), rerun: the final state,
    the metrics rows and the result equal the uninterrupted run's bitwise, with no recompile."""
    config, ref_dir, ref_state = smoke_run
    workdir = str(tmp_path)
    calls = []
    original = train.train_step

    def crashing_step(setup, state, batch):
        calls.append(1)
        if len(calls) > 30:
            raise _Interrupt
        return original(setup, state, batch)

    monkeypatch.setattr(train, "train_step", crashing_step)
    with pytest.raises(_Interrupt):
        train.train_and_evaluate(config, workdir)
    assert [r["step"] for r in _rows(workdir)][-1] == 30  # the row past the checkpoint exists
    assert not os.path.exists(os.path.join(workdir, "result.json"))
    monkeypatch.setattr(train, "train_step", original)

    compiled = train.train_step._cache_size()
    state = train.train_and_evaluate(config, workdir)
    assert train.train_step._cache_size() == compiled  # a restored state reuses the compile
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _without_timing(_rows(workdir)) == _without_timing(_rows(ref_dir))  # no duplicates
    with open(os.path.join(workdir, "result.json")) as f, \
            open(os.path.join(ref_dir, "result.json")) as g:
        assert json.load(f)["seeds"] == json.load(g)["seeds"]


def test_vmapped_seeds_equal_separate_runs():
    """Seed i of (seed=5, num_seeds=2) is the run (seed=5+i, num_seeds=1), to float rounding.

    Not bitwise: XLA lowers the vmapped (batched) matmuls differently, which moves the last bit
    (measured on CPU: max |param diff| 6e-8 after 5 and after 40 steps, losses within 2.4e-7).
    """
    setup = setup_lib.build(helpers.smoke_config("copy"))
    together = train.create_train_state(setup, seed=5, num_seeds=2)
    together, m_together = _steps(setup, together, 5)
    for i in range(2):
        alone = train.create_train_state(setup, seed=5 + i)
        np.testing.assert_array_equal(alone.data_key[0], _seed_data_key(5 + i))
        alone, m_alone = _steps(setup, alone, 5)
        for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b)[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose([m["loss"][i] for m in m_together],
                                   [m["loss"][0] for m in m_alone], rtol=1e-6)
    # The seeds are different models.
    assert not np.allclose(together.params["readout"]["w"][0], together.params["readout"]["w"][1])


def _seed_data_key(seed):
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))


def test_train_step_compiles_once():
    """The state train_step returns has the types of the one it takes: no retrace on call 2."""
    setup = setup_lib.build(helpers.smoke_config("copy"))
    state = train.create_train_state(setup, seed=0, num_seeds=2)
    before = train.train_step._cache_size()
    state, _ = train.train_step(setup, state, train.sample_batch(setup, state))
    after_first, sampled = train.train_step._cache_size(), train.sample_batch._cache_size()
    for _ in range(2):
        state, _ = train.train_step(setup, state, train.sample_batch(setup, state))
    jax.block_until_ready(state)
    assert after_first <= before + 1
    assert train.train_step._cache_size() == after_first
    assert train.sample_batch._cache_size() == sampled
    # Another seed, budget and intervals: the loop's options are not part of the compiled step.
    other = setup_lib.build(helpers.smoke_config("copy", seed=7, **{
        "train.steps": 60, "train.eval_every": 30, "train.stop_when_solved": True}))
    assert other != setup
    train.train_step(other, state, train.sample_batch(other, state))
    assert train.train_step._cache_size() == after_first
    assert train.sample_batch._cache_size() == sampled


def test_nan_stops_with_step_and_saves_nothing(tmp_path, monkeypatch):
    original = train.loss_fn

    def nan_loss(setup, params, batch):
        loss, metrics = original(setup, params, batch)
        return loss * jnp.nan, dict(metrics, loss=loss * jnp.nan)

    monkeypatch.setattr(train, "loss_fn", nan_loss)
    train.train_step.clear_cache()  # retrace with the patched loss, and drop it afterwards
    try:
        with pytest.raises(FloatingPointError, match=r"by step 10 for seed\(s\) \[0\]"):
            train.train_and_evaluate(helpers.smoke_config("copy"), str(tmp_path))
    finally:
        train.train_step.clear_cache()
    assert os.listdir(tmp_path / "checkpoints") == []
    assert not os.path.exists(tmp_path / "result.json")


def test_bad_config_is_refused_before_anything_is_written(tmp_path):
    cases = [({"model.cell": "lstn"}, r"cell: unknown value 'lstn'.*'gru'"),
             ({"model.init": "xavier"}, r"init: unknown value 'xavier'.*'chrono'"),
             ({"train.optimizer": "sgd"}, r"train.optimizer: unknown 'sgd'.*'adam', 'rmsprop'"),
             ({"train.learning_rate": 0.0}, r"train.learning_rate: expected > 0, got 0.0"),
             ({"train.batch_size": 0}, r"train.batch_size: expected an integer >= 1, got 0"),
             ({"seq_len": -3}, r"seq_len: expected an integer >= 1, got -3"),
             ({"task.name": "copying"}, r"unknown task 'copying'")]
    for overrides, message in cases:
        workdir = tmp_path / "run"
        with pytest.raises(ValueError, match=message):
            train.train_and_evaluate(helpers.smoke_config("copy", **overrides), str(workdir))
        assert not workdir.exists()


def test_config_args():
    config = copy_config.get_config("smoke,seq_len=50")
    assert config.seq_len == 50 and config.model.hidden_size == 16
    assert copy_config.get_config("seq_len=50,smoke").seq_len == 50  # order does not matter
    default = copy_config.get_config()
    assert (default.seq_len, default.model.hidden_size, default.train.batch_size,
            default.train.optimizer, default.train.learning_rate, default.train.rmsprop_decay,
            default.train.clip) == (100, 40, 20, "rmsprop", 1e-3, 0.9, 1.0)
    added = adding_config.get_config()
    assert (added.model.hidden_size, added.train.batch_size, added.task.form) == (
        128, 50, "arjovsky")
    with pytest.raises(ValueError, match=r"unknown token 'tiny'.*'smoke'"):
        copy_config.get_config("tiny")
    with pytest.raises(ValueError, match=r"seq_len must be an integer, got 'x'"):
        copy_config.get_config("seq_len=x")


def test_model_dtype_makes_a_bfloat16_stack_and_refuses_other_names():
    # The cheap counterpart of the next (slow) test: no training step is compiled.
    setup = setup_lib.build(helpers.smoke_config("copy", **{"model.dtype": "bfloat16"}))
    params = jax.eval_shape(lambda key: model_lib.init(key, setup.model), jax.random.key(0))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params["rnn"]))
    assert params["readout"]["w"].dtype == jnp.float32
    with pytest.raises(ValueError, match="model.dtype"):
        setup_lib.build(helpers.smoke_config("copy", **{"model.dtype": "int8"}))


@pytest.mark.slow
def test_bfloat16_model_trains_like_float32():
    # model.dtype=bfloat16: the stack's params, state and math in bfloat16 (the readout and the
    # loss in float32). Over 3 smoke steps the loss stays within 1e-3 (relative) of float32's
    # (measured: 2.2e-4 at most), and the params stay bfloat16 through the optimizer.
    losses = {}
    for dtype in ("float32", "bfloat16"):
        setup = setup_lib.build(helpers.smoke_config("copy", **{"model.dtype": dtype}))
        state, metrics = _steps(setup, train.create_train_state(setup, seed=0), 3)
        losses[dtype] = np.array([m["loss"][0] for m in metrics])
        assert all(p.dtype == dtype for p in jax.tree.leaves(state.params["rnn"]))
        assert state.params["readout"]["w"].dtype == np.float32
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-3)
    assert np.any(losses["bfloat16"] != losses["float32"])


def test_chrono_max_len_follows_seq_len():
    config = helpers.smoke_config("copy", **{"model.init": "chrono", "seq_len": 30})
    assert setup_lib.build(config).model.spec.chrono_max_len == 50  # T + 20 input steps
    config.model.chrono_max_len = 7
    assert setup_lib.build(config).model.spec.chrono_max_len == 7


@pytest.mark.slow
def test_command_line(tmp_path):
    """`python -m experiments.main` with the smoke config, as the README shows it (~20 s)."""
    workdir = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "experiments.main",
                    "--config=experiments/configs/adding.py:smoke", f"--workdir={workdir}",
                    "--config.train.steps=20", "--config.model.cell=gru"],
                   cwd=REPO, check=True, timeout=300)
    with open(workdir / "result.json") as f:
        result = json.load(f)
    assert (result["task"], result["cell"], result["steps"]) == ("adding", "gru", 20)
