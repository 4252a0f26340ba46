"""Pins the cell protocol (`gated_rnn/__init__.py`): a cell written outside the package, here a
tanh RNN, runs through `scan.run` on both paths (impl="fused" and impl="scan") with values and
gradients equal to a Python loop over its `step`; and the package's own cells carry every name
of the protocol.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gated_rnn import fused, gru, initializers, lstm, rnn, scan
from tests import helpers

I, H = 3, 5


class Params(NamedTuple):
    w_x: jax.Array  # [I, H]
    w_h: jax.Array  # [H, H]
    b: jax.Array    # [H]


class Carry(NamedTuple):
    h: jax.Array  # [B, H]


class TanhCell:
    """h' = tanh(W x + U h + b), written against the protocol only. `reads_sum` picks which
    backward branch of the fused path it takes (one stored block per step, or xp and hz)."""

    Params, Carry = Params, Carry
    NUM_GATES = 1
    BLOCKS = (1,)
    INITIALIZERS = ("kernel_init", "recurrent_init", "bias_init")
    SUPPORTS_PROJ = False
    TORCH_NAME = None
    TORCH_HH_BIASES = ()

    def __init__(self, reads_sum: bool) -> None:
        self.UPDATE_READS_SUM = reads_sum

    @staticmethod
    def init_params(key, input_size, hidden_size, *, dtype=jnp.float32,
                    kernel_init=initializers.uniform(0.7),
                    recurrent_init=initializers.uniform(0.7), bias_init=initializers.uniform(0.7)):
        k_x, k_h, k_b = jax.random.split(key, 3)
        return Params(kernel_init(k_x, (input_size, hidden_size), dtype),
                      recurrent_init(k_h, (hidden_size, hidden_size), dtype),
                      bias_init(k_b, (hidden_size,), dtype))

    @staticmethod
    def init_carry(batch_shape, hidden_size, *, dtype=jnp.float32):
        return Carry(jnp.zeros((*batch_shape, hidden_size), dtype))

    @staticmethod
    def zero_carry(params, batch_shape):
        return Carry(jnp.zeros((*batch_shape, params.w_h.shape[0]), params.w_h.dtype))

    @staticmethod
    def project(params, xs):
        return xs @ params.w_x + params.b.reshape((1,) * (xs.ndim - 1) + params.b.shape)

    @staticmethod
    def update(params, carry, xp, hz):
        del params
        h = jnp.tanh(xp[0] + hz[0])
        return Carry(h), h

    def recur(self, params, carry, xp):
        return self.update(params, carry, (xp,), (carry.h @ params.w_h,))

    def step(self, params, carry, x):
        return self.recur(params, carry, self.project(params, x))

    @staticmethod
    def forget_bias_init(value):
        return None

    @staticmethod
    def chrono_bias_init(max_len):
        return None


def _loss(outputs):
    carry, ys = outputs
    w = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + jnp.sum(jnp.cos(jnp.arange(H, dtype=ys.dtype))[None, :] * carry.h)


@pytest.mark.parametrize("reads_sum", [True, False])
@pytest.mark.parametrize("lengths, reverse", [(None, False), ([6, 2, 0], True)])
@pytest.mark.parametrize("impl, options", [("fused", {}), ("scan", {}),
                                           ("fused", {"remat": True, "chunk_size": 4})])
def test_a_cell_from_outside_runs_on_both_paths(key, reads_sum, lengths, reverse, impl, options):
    cell = TanhCell(reads_sum)
    assert fused.supports(cell) and scan.resolve_impl(cell, "auto") is scan.Impl.FUSED
    with jax.enable_x64():
        params = cell.init_params(key, I, H, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (3, 6, I), jnp.float64)
        carry0 = Carry(jax.random.normal(jax.random.fold_in(key, 2), (3, H), jnp.float64))
        seq = None if lengths is None else jnp.array(lengths)

        def run(p, xs, c):
            return scan.run(cell, p, xs, carry=c, seq_lengths=seq, reverse=reverse, impl=impl,
                            **options)

        got = run(params, xs, carry0)
        want = helpers.step_loop(cell, params, xs, carry0, lengths, reverse)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        got_g = jax.grad(lambda *a: _loss(run(*a)), argnums=(0, 1, 2))(params, xs, carry0)
        want_g = jax.grad(lambda *a: _loss(helpers.step_loop(cell, *a, lengths, reverse)),
                          argnums=(0, 1, 2))(params, xs, carry0)
        for a, b in zip(jax.tree_util.tree_leaves(got_g), jax.tree_util.tree_leaves(want_g)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


PROTOCOL = ("Params", "Carry", "init_params", "init_carry", "zero_carry", "project", "recur",
            "step", "NUM_GATES", "update", "BLOCKS", "UPDATE_READS_SUM", "INITIALIZERS",
            "SUPPORTS_PROJ", "forget_bias_init", "chrono_bias_init", "TORCH_NAME",
            "TORCH_HH_BIASES")


@pytest.mark.parametrize("cell", [rnn, lstm, gru, gru.cell("reset_after"),
                                  gru.cell("reset_before"), TanhCell(True)],
                         ids=["rnn", "lstm", "gru", "gru_after", "gru_before", "outside"])
def test_cells_carry_the_whole_protocol(cell):
    for name in PROTOCOL:
        assert hasattr(cell, name), name
    assert sum(cell.BLOCKS) == cell.NUM_GATES
    assert set(cell.INITIALIZERS) <= set(cell.init_params.__code__.co_varnames)
    for field, gate in cell.TORCH_HH_BIASES:
        assert field in cell.Params._fields and 0 <= gate < cell.NUM_GATES
