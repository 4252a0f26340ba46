"""LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

    i = sigma(W_i x + U_i h + b_i)      f = sigma(W_f x + U_f h + b_f)
    g = tanh(W_g x + U_g h + b_g)       o = sigma(W_o x + U_o h + b_o)
    c' = f * c + i * g                  h' = o * tanh(c')
    with a projection (PyTorch's proj_size > 0): h' = (o * tanh(c')) @ W_hr

Layout: `w_x: [I, 4H]`, `w_h: [P, 4H]`, `b: [4H]`, gate blocks in the order i, f, g, o
(PyTorch's order, so its weights load by a transpose); `w_hr: [H, P]` or None, and P = H without
a projection. PyTorch's two biases `b_ih + b_hh` are one sum, `b`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gated_rnn import checks, initializers

# What the rest of the library reads about this cell (the protocol: `gated_rnn/__init__.py`).
NUM_GATES = 4
BLOCKS = (4,)  # `update` takes xp and hz whole: one block of 4H columns (see `update`)
UPDATE_READS_SUM = True  # `update` reads xp and hz only as xp + hz
INITIALIZERS = ("kernel_init", "recurrent_init", "bias_init", "proj_init")
SUPPORTS_PROJ = True  # init_params and init_carry take proj_size (PyTorch's output projection)
TORCH_NAME = "LSTM"
TORCH_HH_BIASES = ()  # PyTorch's two biases are one sum, `b`


class Params(NamedTuple):
    w_x: jax.Array                    # [I, 4H]
    w_h: jax.Array                    # [P, 4H]
    b: jax.Array                      # [4H]
    w_hr: Optional[jax.Array] = None  # [H, P], projection of the output (None: P = H)


class Carry(NamedTuple):
    h: jax.Array  # [..., P] output / hidden state
    c: jax.Array  # [..., H] cell state


def init_params(key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                proj_size: int = 0,
                kernel_init=initializers.lecun_normal(),
                recurrent_init=initializers.orthogonal_gates(NUM_GATES),
                bias_init=initializers.zeros,
                proj_init=initializers.lecun_normal()) -> Params:
    """Draws `Params` for input size I, hidden size H and, if proj_size > 0, output size P."""
    out = proj_size or hidden_size
    k_x, k_h, k_b, k_r = jax.random.split(key, 4)
    return Params(w_x=kernel_init(k_x, (input_size, NUM_GATES * hidden_size), dtype),
                  w_h=recurrent_init(k_h, (out, NUM_GATES * hidden_size), dtype),
                  b=bias_init(k_b, (NUM_GATES * hidden_size,), dtype),
                  w_hr=proj_init(k_r, (hidden_size, proj_size), dtype) if proj_size else None)


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, *, dtype=jnp.float32,
               proj_size: int = 0) -> Carry:
    """Zero state: h `[*batch_shape, P]`, c `[*batch_shape, H]`."""
    return Carry(h=jnp.zeros((*batch_shape, proj_size or hidden_size), dtype),
                 c=jnp.zeros((*batch_shape, hidden_size), dtype))


def zero_carry(params: Params, batch_shape: tuple[int, ...]) -> Carry:
    """`init_carry` with sizes and dtype read off `params`."""
    hidden = params.w_h.shape[1] // NUM_GATES
    return init_carry(batch_shape, hidden, dtype=params.w_h.dtype,
                      proj_size=0 if params.w_hr is None else params.w_hr.shape[1])


def project(params: Params, xs: jax.Array) -> jax.Array:
    """Carry-independent part `x @ W + b`: xs `[..., I]` -> `[..., 4H]`."""
    checks.check_input(xs, params.w_x.shape[0], params.w_x.dtype, what="lstm input")
    return xs @ params.w_x + checks.lift(params.b, xs.ndim)


def recur(params: Params, carry: Carry, xp: jax.Array) -> tuple[Carry, jax.Array]:
    """One step given the projected input xp `[..., 4H]`; returns (carry, h)."""
    return update(params, carry, (xp,), (carry.h @ params.w_h,))


def activate(z: jax.Array) -> tuple[jax.Array, ...]:
    """The gates (i, f, g, o), each `[..., H]`, from the pre-activation z `[..., 4H]`.

    One sigmoid over all 4H columns: i, f, o = sigma(z) and g = tanh(z) = 2 sigma(2z) - 1 (the
    g columns scaled by 2 on the way in and out). XLA:CPU vectorizes a transcendental over a
    whole array, while on column slices of the step's input it emitted scalar exp/tanh that
    cost as much as the step's matmul (README "Performance" has the measurements). The price:
    g's error is absolute (about one unit in the last place of 1: at most 1.8e-7 in float32)
    instead of relative; c and h are as close to their float64 values as with per-gate float32
    activations (max abs error 5.8e-7 / 3.1e-7 against 5.8e-7 / 3.8e-7 over 4096 x 128
    pre-activations ~ N(0, 16)), and match PyTorch to the same 1e-5 (tests/test_interop.py).
    """
    hidden = z.shape[-1] // NUM_GATES
    two = checks.lift(jnp.where(jnp.arange(NUM_GATES * hidden) // hidden == 2, 2, 1)
                      .astype(z.dtype), z.ndim)
    return tuple(jnp.split(jax.nn.sigmoid(z * two) * two - (two - 1), NUM_GATES, axis=-1))


def update(params: Params, carry: Carry, xp, hz) -> tuple[Carry, jax.Array]:
    """The elementwise rest of a step, from the gate blocks of its two matmuls.

    Split from `recur` for the fused scan (`gated_rnn.fused`), which does the matmuls itself
    and takes `dw_h` out of the reverse loop. The blocks are as `BLOCKS` says: one, all 4H
    columns (see `activate`).

    Args:
      params: Params (only `w_hr` is read).
      carry: Carry with h `[..., P]`, c `[..., H]`.
      xp: `(x @ w_x + b,)`, `[..., 4H]`.
      hz: `(carry.h @ w_h,)`, `[..., 4H]`.

    Returns:
      (carry, h).
    """
    i, f, g, o = activate(xp[0] + hz[0])
    c = f * carry.c + i * g
    h = o * jnp.tanh(c)
    if params.w_hr is not None:
        h = h @ params.w_hr
    return Carry(h=h, c=c), h


def step(params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
    """One time step. x: `[..., I]`; carry: Carry with h `[..., P]`, c `[..., H]`. Returns (carry, h)."""
    checks.check_step(x, carry, what="lstm.step")
    return recur(params, carry, project(params, x))


def internals(params: Params, carry: Carry, xp: jax.Array) -> dict:
    """The step's gates {i, f, g, o, keep = f}, each `[..., H]`, for `trace.run`."""
    i, f, g, o = activate(xp + carry.h @ params.w_h)
    return {"i": i, "f": f, "g": g, "o": o, "keep": f}


def forget_bias_init(value: float) -> initializers.Initializer:
    """Bias `[4H]` with the forget gate at `value` (`layers.Init.FORGET_BIAS`)."""
    return initializers.forget_gate_bias(value)


def chrono_bias_init(max_len: int) -> initializers.Initializer:
    """Chrono bias `[4H]` for T_max = max_len (`layers.Init.CHRONO`): b_f, and b_i = -b_f."""
    return initializers.chrono_lstm(max_len)
