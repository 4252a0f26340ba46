"""minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs all we needed?"): an
LSTM whose gates and candidate read the input only, with normalized gates.

    f = sigma(W_f x + b_f)    i = sigma(W_i x + b_i)    h~ = g(W_h x + b_h)   (g: `mingru.g`)
    f' = f / (f + i)          i' = i / (f + i)          (the paper's length-independent scaling)
    h' = f' * h + i' * h~  =  a * h + b,   a = f',  b = i' * h~

As `mingru`: `coefficients` (a = f', b = i' h~) give the linear-scan paths of `scan.run`
(`gated_rnn.linear_scan`: a multiply-add loop, or the associative scan); `recur`/`step` are the
sequential form. The zero carry is h = 0.

Layout: `w_x: [I, 3H]`, `b: [3H]` in the order f, i, h~. No recurrent kernel, no fused path, no
PyTorch counterpart.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gated_rnn import checks, initializers
from gated_rnn.mingru import g

# What the rest of the library reads about this cell (the protocol: `gated_rnn/__init__.py`).
NUM_GATES = 3
BLOCKS = (1, 1, 1)
UPDATE_READS_SUM = False
update = None  # no recurrent matmul to fuse: `coefficients` gives the linear-scan paths
INITIALIZERS = ("kernel_init", "bias_init")
SUPPORTS_PROJ = False
TORCH_NAME = None
TORCH_HH_BIASES = ()


class Params(NamedTuple):
    w_x: jax.Array  # [I, 3H]  blocks f, i, h~
    b: jax.Array    # [3H]


class Carry(NamedTuple):
    h: jax.Array  # [..., H]


def init_params(key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                kernel_init=initializers.lecun_normal(),
                bias_init=initializers.zeros) -> Params:
    """Draws `Params` for input size I and hidden size H."""
    k_x, k_b = jax.random.split(key)
    return Params(w_x=kernel_init(k_x, (input_size, NUM_GATES * hidden_size), dtype),
                  b=bias_init(k_b, (NUM_GATES * hidden_size,), dtype))


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, *, dtype=jnp.float32) -> Carry:
    """Zero state: h `[*batch_shape, H]`."""
    return Carry(h=jnp.zeros((*batch_shape, hidden_size), dtype))


def zero_carry(params: Params, batch_shape: tuple[int, ...]) -> Carry:
    """`init_carry` with H and dtype read off `params`."""
    return init_carry(batch_shape, params.b.shape[0] // NUM_GATES, dtype=params.b.dtype)


def project(params: Params, xs: jax.Array) -> jax.Array:
    """`x @ W + b`: xs `[..., I]` -> `[..., 3H]` (the whole step's matmul)."""
    checks.check_input(xs, params.w_x.shape[0], params.w_x.dtype, what="minlstm input")
    return xs @ params.w_x + checks.lift(params.b, xs.ndim)


def _gates(xp: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    k_f, k_i, k_h = jnp.split(xp, NUM_GATES, axis=-1)
    f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
    return f / (f + i), i / (f + i), k_h


def recur(params: Params, carry: Carry, xp: jax.Array) -> tuple[Carry, jax.Array]:
    """The sequential step from xp `[..., 3H]`: h' = f' h + i' g(k_h). Returns (carry, h)."""
    del params
    f, i, k_h = _gates(xp)
    h = f * carry.h + i * g(k_h)
    return Carry(h=h), h


def step(params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
    """One time step. x: `[..., I]`; carry: Carry with h `[..., H]`. Returns (carry, h)."""
    return recur(params, carry, project(params, x))


def coefficients(params: Params, xp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a, b), each `[..., H]`, with h' = a h + b, from xp `[..., 3H]`: a = f', b = i' g(k_h)."""
    del params
    f, i, k_h = _gates(xp)
    return f, i * g(k_h)


def internals(params: Params, carry: Carry, xp: jax.Array) -> dict:
    """The step's normalized gates {f = a = keep, i}, each `[..., H]`, for `trace.run`."""
    del params, carry
    f, i, _ = _gates(xp)
    return {"f": f, "i": i, "a": f, "keep": f}


def forget_bias_init(value: float) -> initializers.Initializer:
    """Bias `[3H]` with f at `value` (`Init.FORGET_BIAS`; i at 0)."""
    return initializers.gate_constant(gate=0, num_gates=NUM_GATES, value=value)


def chrono_bias_init(max_len: int) -> initializers.Initializer:
    """Chrono bias `[3H]` (`Init.CHRONO`): b_f ~ log U[1, T_max - 1], b_i = -b_f, as the LSTM;
    then f + i = 1, so f' = f and the keep gate has Tallec & Ollivier's timescales."""

    def init(key, shape, dtype=jnp.float32):
        (width,) = shape
        h = width // NUM_GATES
        b_f = initializers.chrono_values(key, h, max_len, dtype)
        return jnp.concatenate([b_f, -b_f, jnp.zeros((h,), dtype)])

    return init
