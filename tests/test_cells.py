"""Pins each cell's step against the NumPy transcription (float64) and checks its gradients.

Covers rnn, lstm (with and without projection) and gru (both variants, both update-gate sign
conventions via `flip_update_gate`), plus the carry/shape/dtype contracts and input errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64
from jax.test_util import check_grads

from gated_rnn import gru, initializers, lstm, rnn
from tests import numpy_ref as ref

I, H, B = 5, 4, 3


def _np(params):
    return {k: (None if v is None else np.asarray(v)) for k, v in params._asdict().items()}


def _random_params(module, key, dtype, **kw):
    """Params with every entry random (including biases), so no term can hide behind a zero."""
    u = initializers.uniform(0.7)
    extra = {"candidate_bias_init": u} if module is gru else {}
    return module.init_params(key, I, H, dtype=dtype, kernel_init=u, recurrent_init=u,
                              bias_init=u, **extra, **kw)


def test_lstm_step_matches_numpy(key):
    with enable_x64():
        kp, kh, kc, kx = jax.random.split(key, 4)
        p = _random_params(lstm, kp, jnp.float64)
        h = jax.random.normal(kh, (B, H), jnp.float64)
        c = jax.random.normal(kc, (B, H), jnp.float64)
        x = jax.random.normal(kx, (B, I), jnp.float64)
        carry, y = lstm.step(p, lstm.Carry(h=h, c=c), x)
        h_ref, c_ref = ref.lstm_step(_np(p), np.asarray(h), np.asarray(c), np.asarray(x))
        np.testing.assert_allclose(carry.h, h_ref, rtol=1e-12)
        np.testing.assert_allclose(carry.c, c_ref, rtol=1e-12)
        np.testing.assert_array_equal(y, carry.h)
        assert carry.h.dtype == jnp.float64 and carry.h.shape == (B, H)


def test_lstm_projection_matches_numpy(key):
    with enable_x64():
        kp, kh, kc, kx = jax.random.split(key, 4)
        p = _random_params(lstm, kp, jnp.float64, proj_size=2,
                           proj_init=initializers.uniform(0.7))
        assert p.w_h.shape == (2, 4 * H) and p.w_hr.shape == (H, 2)
        h = jax.random.normal(kh, (B, 2), jnp.float64)
        c = jax.random.normal(kc, (B, H), jnp.float64)
        x = jax.random.normal(kx, (B, I), jnp.float64)
        carry, _ = lstm.step(p, lstm.Carry(h=h, c=c), x)
        h_ref, c_ref = ref.lstm_step(_np(p), np.asarray(h), np.asarray(c), np.asarray(x))
        np.testing.assert_allclose(carry.h, h_ref, rtol=1e-12)
        np.testing.assert_allclose(carry.c, c_ref, rtol=1e-12)
        zero = lstm.zero_carry(p, (B,))
        assert zero.h.shape == (B, 2) and zero.c.shape == (B, H)


@pytest.mark.parametrize("variant", ["reset_after", "reset_before"])
def test_gru_step_matches_numpy(key, variant):
    with enable_x64():
        kp, kh, kx = jax.random.split(key, 3)
        p = _random_params(gru, kp, jnp.float64)
        h = jax.random.normal(kh, (B, H), jnp.float64)
        x = jax.random.normal(kx, (B, I), jnp.float64)
        carry, y = gru.step(p, gru.Carry(h=h), x, variant=gru.Variant(variant))
        h_ref = ref.gru_step(_np(p), np.asarray(h), np.asarray(x), variant)
        np.testing.assert_allclose(carry.h, h_ref, rtol=1e-12)
        np.testing.assert_array_equal(y, carry.h)
        # The cell object binds the same variant.
        carry2, _ = gru.cell(variant).step(p, gru.Carry(h=h), x)
        np.testing.assert_array_equal(carry2.h, carry.h)


def test_gru_variants_differ(key):
    """The two variants are different functions (guards against one silently aliasing the other)."""
    p = _random_params(gru, key, jnp.float32)
    h = jnp.full((B, H), 0.5)
    x = jnp.ones((B, I))
    a, _ = gru.step(p, gru.Carry(h), x, variant=gru.Variant.RESET_AFTER)
    b, _ = gru.step(p, gru.Carry(h), x, variant=gru.Variant.RESET_BEFORE)
    assert np.max(np.abs(a.h - b.h)) > 1e-3


@pytest.mark.parametrize("variant", ["reset_after", "reset_before"])
def test_gru_flip_update_gate_switches_sign_convention(key, variant):
    """flip(p) under `(1-z) h + z h~` equals p under the other convention, written out in NumPy."""
    with enable_x64():
        kp, kh, kx = jax.random.split(key, 3)
        p = _random_params(gru, kp, jnp.float64)
        h = np.asarray(jax.random.normal(kh, (B, H), jnp.float64))
        x = np.asarray(jax.random.normal(kx, (B, I), jnp.float64))
        flipped = gru.flip_update_gate(p)
        got, _ = gru.step(flipped, gru.Carry(jnp.asarray(h)), jnp.asarray(x),
                          variant=gru.Variant(variant))
        # NumPy: the same gates as the reference, the opposite use of z.
        q = _np(p)
        Hh = H
        blk = lambda M, k: M[..., k * Hh:(k + 1) * Hh]  # noqa: E731
        r = ref.sigmoid(x @ blk(q["w_x"], 0) + h @ blk(q["w_h"], 0) + blk(q["b"], 0))
        z = ref.sigmoid(x @ blk(q["w_x"], 1) + h @ blk(q["w_h"], 1) + blk(q["b"], 1))
        if variant == "reset_after":
            n = np.tanh(x @ blk(q["w_x"], 2) + blk(q["b"], 2) + r * (h @ blk(q["w_h"], 2) + q["b_hn"]))
            want = (1 - z) * h + z * n          # z takes
        else:
            n = np.tanh(x @ blk(q["w_x"], 2) + (r * h) @ blk(q["w_h"], 2) + blk(q["b"], 2) + q["b_hn"])
            want = (1 - z) * n + z * h          # z keeps (Cho et al. 2014, eq. 7)
        np.testing.assert_allclose(got.h, want, rtol=1e-12)
        # An involution.
        back = gru.flip_update_gate(flipped)
        for a, b in zip(back, p):
            np.testing.assert_array_equal(a, b)


def test_rnn_step_matches_numpy(key):
    with enable_x64():
        kp, kh, kx = jax.random.split(key, 3)
        p = _random_params(rnn, kp, jnp.float64)
        h = jax.random.normal(kh, (B, H), jnp.float64)
        x = jax.random.normal(kx, (B, I), jnp.float64)
        carry, y = rnn.step(p, rnn.Carry(h=h), x)
        np.testing.assert_allclose(carry.h, ref.rnn_step(_np(p), np.asarray(h), np.asarray(x)),
                                   rtol=1e-12)


def test_step_is_project_then_recur(key):
    p = _random_params(lstm, key, jnp.float32)
    carry = lstm.zero_carry(p, (B,))
    x = jnp.arange(B * I, dtype=jnp.float32).reshape(B, I) / 10
    a = lstm.step(p, carry, x)
    b = lstm.recur(p, carry, lstm.project(p, x))
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(u, v)


def test_leading_axes_are_batch_axes(key):
    """x [2, 3, I] (two batch axes) gives the same numbers as the flattened [6, I] batch."""
    p = _random_params(lstm, key, jnp.float32)
    x = jax.random.normal(key, (2, 3, I))
    c2, y2 = lstm.step(p, lstm.zero_carry(p, (2, 3)), x)
    c1, y1 = lstm.step(p, lstm.zero_carry(p, (6,)), x.reshape(6, I))
    np.testing.assert_allclose(y2.reshape(6, H), y1, rtol=1e-6)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "gru_before"])
def test_check_grads(key, name):
    module, kwargs = {"rnn": (rnn, {}), "lstm": (lstm, {}), "gru": (gru, {}),
                      "gru_before": (gru, {"variant": gru.Variant.RESET_BEFORE})}[name]
    with enable_x64():
        kp, kx = jax.random.split(key)
        p = _random_params(module, kp, jnp.float64)
        carry = jax.tree_util.tree_map(lambda a: a + 0.3, module.zero_carry(p, (2,)))
        x = jax.random.normal(kx, (2, I), jnp.float64)
        f = lambda p, carry, x: module.step(p, carry, x, **kwargs)  # noqa: E731
        check_grads(f, (p, carry, x), order=1, modes=("fwd", "rev"))


def test_input_errors_name_the_shapes(key):
    p = lstm.init_params(key, I, H)
    carry = lstm.zero_carry(p, (B,))
    with pytest.raises(ValueError, match=r"I=5.*\(3, 6\)"):
        lstm.step(p, carry, jnp.zeros((B, I + 1)))
    with pytest.raises(ValueError, match="float32.*int32"):
        lstm.step(p, carry, jnp.zeros((B, I), jnp.int32))
    with pytest.raises(ValueError, match="float32.*float16"):
        gru.step(gru.init_params(key, I, H), gru.init_carry((B,), H), jnp.zeros((B, I), jnp.float16))
    with pytest.raises(ValueError, match="variant"):
        gru.cell("reset_sideways")


def test_init_carry_shapes_and_dtype():
    c = lstm.init_carry((2, 3), H, dtype=jnp.bfloat16)
    assert c.h.shape == (2, 3, H) and c.c.shape == (2, 3, H) and c.h.dtype == jnp.bfloat16
    assert not np.any(np.asarray(c.h, np.float32))
    assert gru.init_carry((B,), H).h.shape == (B, H)
    assert rnn.init_carry((B,), H).h.shape == (B, H)


@pytest.mark.parametrize("cell", [lstm, gru, rnn])
def test_step_refuses_an_unbatched_x_with_a_batched_carry(key, cell):
    # It used to broadcast [I] against carry [B, H] and return a [B, H] step of the same x.
    params = cell.init_params(key, 3, 4)
    with pytest.raises(ValueError, match=r"step: x \[..., I\] and carry.h \[..., H\] must have "
                                         r"the same batch axes; got x \(3,\), carry.h \(2, 4\)"):
        cell.step(params, cell.init_carry((2,), 4), jnp.ones((3,)))
