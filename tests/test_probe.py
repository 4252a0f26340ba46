"""Pins the gradient-flow probe against cases computed independently: a linear RNN (the state
gain is ||W^k||_F / sqrt(H)), a tanh RNN (a NumPy product of step Jacobians), an LSTM (central finite
differences of the final h in float64 with respect to the whole carry), and the input gradient
(finite differences of each sequence's loss). Then one real smoke-size sweep point, end to end:
trained, skipped when rerun, probed.
"""

import dataclasses
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from experiments import model as model_lib
from experiments import probe, report, sweep, tasks, train
from experiments import setup as setup_lib
from gated_rnn import lstm, rnn


class _Carry(NamedTuple):
    h: jax.Array


class _Linear:
    """h_t = h_{t-1} @ W + x_t @ U: the probe's known case."""

    @staticmethod
    def project(params, xs):
        return xs @ params["u"]

    @staticmethod
    def recur(params, carry, xp):
        h = carry.h @ params["w"] + xp
        return _Carry(h), h

    @staticmethod
    def zero_carry(params, batch_shape):
        return _Carry(jnp.zeros((*batch_shape, params["w"].shape[0]), params["w"].dtype))


def test_linear_rnn_gain_is_the_norm_of_the_matrix_power():
    rng = np.random.default_rng(0)
    h, length = 5, 12
    w = (0.5 * np.eye(h) + 0.2 * rng.standard_normal((h, h))).astype(np.float32)  # non-normal
    params = {"w": jnp.asarray(w), "u": jnp.asarray(rng.standard_normal((3, h)), jnp.float32)}
    xs = jnp.asarray(rng.standard_normal((2, length, 3)), jnp.float32)
    gains = np.asarray(jax.jit(probe.state_gains, static_argnums=0)(_Linear, params, xs))
    expected = [np.linalg.norm(np.linalg.matrix_power(w, length - 1 - t), "fro") / np.sqrt(h)
                for t in range(length)]
    assert gains.shape == (2, length)
    np.testing.assert_allclose(gains, np.stack([expected] * 2), rtol=2e-5)
    assert max(expected) > 4 * min(expected)  # a case where the gain varies with k


def test_tanh_rnn_gain_matches_a_numpy_jacobian_product(key):
    length, h = 9, 4
    params = rnn.init_params(key, 3, h)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (1, length, 3))
    gains = np.asarray(jax.jit(probe.state_gains, static_argnums=0)(rnn, params, xs))[0]
    w_x, w_h, b = (np.asarray(p, np.float64) for p in params)
    hs, state = [], np.zeros(h)
    for t in range(length):
        state = np.tanh(np.asarray(xs[0, t], np.float64) @ w_x + b + state @ w_h)
        hs.append(state)
    for t in range(length):
        jac = np.eye(h)  # d h_{L-1} / d h_t, column convention: J = prod diag(1 - h^2) W^T
        for s in range(t + 1, length):
            jac = np.diag(1 - hs[s] ** 2) @ w_h.T @ jac
        np.testing.assert_allclose(gains[t], np.linalg.norm(jac, "fro") / np.sqrt(h), rtol=1e-4)


def test_lstm_gain_matches_finite_differences_over_h_and_c(key):
    length, h, eps = 7, 3, 1e-6
    with enable_x64():
        params = lstm.init_params(key, 2, h, dtype=jnp.float64)
        params = params._replace(b=params.b + 0.5)  # open gates: c carries signal
        xs = jax.random.normal(jax.random.fold_in(key, 1), (1, length, 2), jnp.float64)
        gains = np.asarray(jax.jit(probe.state_gains, static_argnums=0)(lstm, params, xs))[0]

        @jax.jit
        def final_h(t, delta):  # delta [2H] = [dh, dc], added to the carry after step t
            carry = lstm.zero_carry(params, (1,))
            for s in range(length):
                carry, _ = lstm.step(params, carry, xs[:, s])
                bump = delta * (s == t)
                carry = lstm.Carry(h=carry.h + bump[None, :h], c=carry.c + bump[None, h:])
            return carry.h[0]

        directions = eps * jnp.eye(2 * h, dtype=jnp.float64)
        for t in (0, 3, length - 1):
            plus = jax.vmap(lambda d: final_h(t, d))(directions)
            minus = jax.vmap(lambda d: final_h(t, d))(-directions)
            jac = np.asarray((plus - minus) / (2 * eps)).T  # [H, 2H]
            np.testing.assert_allclose(gains[t], np.linalg.norm(jac, "fro") / np.sqrt(h),
                                       rtol=1e-6)
    np.testing.assert_allclose(gains[-1], 1.0, rtol=1e-12)  # k = 0: J = [I, 0]


def test_input_gradients_match_finite_differences_of_each_sequence_loss(key):
    config = sweep.make_config(sweep.resolve_grid("smoke", tasks_=["adding"], cells=["gru"]),
                               sweep.Point("adding", "gru", "reset_after", "default", 6))
    setup = setup_lib.build(config)
    with enable_x64():
        model = setup.model._replace(spec=dataclasses.replace(setup.model.spec,
                                                              dtype=jnp.float64))
        # Random params of the model's shapes (no init to compile: the test is about grads).
        rng = np.random.default_rng(0)
        shapes = jax.eval_shape(lambda k: model_lib.init(k, setup.model), key)
        params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape)), shapes)
        batch = jax.jit(setup.task.sample, static_argnums=1)(jax.random.fold_in(key, 1), 3)
        batch = batch._replace(inputs=batch.inputs.astype(jnp.float64))
        norms = np.asarray(jax.jit(probe.input_gradients, static_argnums=(0, 1))(
            model, setup.task, params, batch))
        length, size = batch.inputs.shape[1:]

        @jax.jit
        def loss_of(b, inputs):  # sequence b's own loss, alone in its batch
            one = tasks.Batch(inputs=inputs[None], targets=batch.targets[b][None])
            return setup.task.loss_and_metrics(model_lib.apply(model, params, one.inputs), one)[0]

        eps = 1e-6
        bumps = eps * jnp.eye(length * size, dtype=jnp.float64).reshape(-1, length, size)
        for b in range(3):
            plus = jax.vmap(lambda d: loss_of(b, batch.inputs[b] + d))(bumps)
            minus = jax.vmap(lambda d: loss_of(b, batch.inputs[b] - d))(bumps)
            grads = np.asarray((plus - minus) / (2 * eps)).reshape(length, size)
            np.testing.assert_allclose(norms[b], np.linalg.norm(grads, axis=-1), rtol=1e-6,
                                       atol=1e-12)
    assert norms.shape == (3, 6) and np.all(norms[:, 0] > 0)


# Slow: a sweep point trained through the CLI (the finite-difference tests above stay in the
# default run).
@pytest.mark.slow
def test_sweep_point_then_probe_end_to_end(tmp_path):
    """A smoke-size point through the real trainer (then skipped when rerun), then probed."""
    grid = sweep.resolve_grid("smoke", tasks_=["adding"], cells=["lstm"], seq_lens=[10],
                              num_seeds=2)
    points = sweep.grid_points(grid)
    outcome = sweep.run_points(grid, points, str(tmp_path))
    assert outcome.ran == ["adding/lstm-default/T10"]
    assert sweep.run_points(grid, points, str(tmp_path)).skipped == outcome.ran
    assert len(report.load_rows(str(tmp_path))) == 2
    workdir = os.path.join(tmp_path, outcome.ran[0])
    # A run recorded by older code: a field it did not have yet, one since removed.
    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)
    del stored["train"]["eps"]
    stored["model"]["retired_option"] = 3
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(stored, f)
    assert probe.load_config(workdir).model.cell == "lstm"
    p = probe.probe_run(workdir, batch_size=4, seed_index=1)
    assert (p["seed"], p["trained_step"], p["distance"]) == (1, 40, list(range(10)))
    for when in ("at_init", "trained"):
        gains = np.asarray(p[when]["state_gain"])
        assert gains.shape == (10,) and abs(gains[0] - 1.0) < 1e-5
        assert np.all(np.asarray(p[when]["input_grad"]) > 0)
    assert p["trained"]["input_grad"] != p["at_init"]["input_grad"]  # training moved params
    paths = probe.write_probes([p], str(tmp_path / "probe"))
    with open(paths["probe.json"]) as f:
        assert json.load(f)[0]["trained"] == p["trained"]
    with open(paths["probe.csv"]) as f:
        assert len(f.read().splitlines()) == 1 + 2 * 10
    with open(paths["probe.png"], "rb") as f:
        assert f.read(4) == b"\x89PNG"
