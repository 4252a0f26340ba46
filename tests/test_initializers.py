"""Pins the initializer factories: orthogonality per gate block, the forget-gate and chrono
biases (values, ranges, signs), PyTorch's uniform bounds, and that cells draw through them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gated_rnn import initializers, layers, lstm


def test_orthogonal_gates_each_block(key):
    w = np.asarray(initializers.orthogonal_gates(4)(key, (32, 128)))
    for g in range(4):
        block = w[:, g * 32:(g + 1) * 32]
        np.testing.assert_allclose(block.T @ block, np.eye(32), atol=1e-5)
    # Blocks are independent draws, not copies.
    assert np.max(np.abs(w[:, :32] - w[:, 32:64])) > 0.1
    with pytest.raises(ValueError, match="3 equal gate blocks"):
        initializers.orthogonal_gates(3)(key, (4, 10))


def test_forget_gate_bias(key):
    b = np.asarray(initializers.forget_gate_bias(2.0)(key, (4 * 5,)))
    np.testing.assert_array_equal(b, np.r_[np.zeros(5), 2 * np.ones(5), np.zeros(10)])


def test_chrono_lstm_distribution(key):
    b = np.asarray(initializers.chrono_lstm(1000)(key, (4 * 4000,)))
    b_i, b_f, rest = b[:4000], b[4000:8000], b[8000:]
    np.testing.assert_array_equal(b_i, -b_f)
    assert not np.any(rest)
    assert b_f.min() >= 0 and b_f.max() <= np.log(999)
    # exp(b_f) ~ U[1, 999]: mean 500, checked to within a few standard errors.
    np.testing.assert_allclose(np.exp(b_f).mean(), 500, rtol=0.03)
    with pytest.raises(ValueError, match="max_len must be >= 3"):
        initializers.chrono_lstm(2)(key, (8,))


def test_chrono_gru_signs(key):
    keep = np.asarray(initializers.chrono_gru(50)(key, (3 * 8,)))
    take = np.asarray(initializers.chrono_gru(50, keep_gate_sign=-1.0)(key, (3 * 8,)))
    np.testing.assert_array_equal(keep[8:16], -take[8:16])
    assert np.all(keep[8:16] >= 0) and not np.any(keep[:8]) and not np.any(keep[16:])


def test_torch_default_bounds(key):
    w = np.asarray(initializers.torch_default(16)(key, (64, 64)))
    assert np.abs(w).max() <= 0.25 and np.abs(w).max() > 0.24
    np.testing.assert_allclose(w.var(), 0.25**2 / 3, rtol=0.1)


def test_cells_draw_through_the_factories(key):
    """init_params with a factory gives exactly what the factory draws from the same sub-key."""
    p = lstm.init_params(key, 3, 4, bias_init=initializers.forget_gate_bias(1.0))
    k_x, k_h, _, _ = jax.random.split(key, 4)
    np.testing.assert_array_equal(p.w_x, initializers.lecun_normal()(k_x, (3, 16), jnp.float32))
    np.testing.assert_array_equal(p.w_h, initializers.orthogonal_gates(4)(k_h, (4, 16),
                                                                          jnp.float32))
    np.testing.assert_array_equal(p.b[4:8], 1.0)


@pytest.mark.parametrize("init", ["default", "forget_bias", "chrono", "torch"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_init_is_the_float32_draw_rounded_for_every_scheme(key, init, dtype):
    # bfloat16 failed at init for every scheme but torch (no bfloat16 QR on CPU).
    kw = {"chrono_max_len": 20} if init == "chrono" else {}
    half = layers.init(key, layers.Spec("lstm", 3, 4, init=init, dtype=dtype, **kw))
    full = layers.init(key, layers.Spec("lstm", 3, 4, init=init, **kw))
    for h, f in zip(jax.tree_util.tree_leaves(half), jax.tree_util.tree_leaves(full)):
        assert h.dtype == dtype
        np.testing.assert_array_equal(h, f.astype(dtype))
