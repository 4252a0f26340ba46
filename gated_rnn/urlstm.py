"""UR-LSTM (Gu, Gulcehre, Paine, Hoffman & Pascanu 2020, "Improving the gating mechanism of
recurrent neural networks"): an LSTM whose forget gate has a uniform init (UGI) and is refined.

    f = sigma(W_f x + U_f h + b_f' + b_f)     forget gate, b_f = logit(U[1/H, 1 - 1/H]) (UGI)
    r = sigma(W_r x + U_r h + b_r' - b_f)     refine gate (the same b_f, negated)
    g = r (1 - (1 - f)^2) + (1 - r) f^2       effective gate: keeps the state
    u = tanh(W_u x + U_u h + b_u')            candidate
    o = sigma(W_o x + U_o h + b_o')           output gate
    c' = g * c + (1 - g) * u                  h' = o * tanh(c')

As in the authors' formulation, `b_f` is one parameter shared by f and r (with opposite
signs); `b'` (the `b` field) is the ordinary bias of the four projections, zero at init, so at
init the gates are exactly the paper's. No input gate: `1 - g` writes the candidate.

Layout: `w_x: [I, 4H]`, `w_h: [H, 4H]`, `b: [4H]` in the gate order f, r, u, o; `b_f: [H]`.
`layers.Init.FORGET_BIAS` / `CHRONO` change nothing: UGI is the cell's own forget-gate init.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gated_rnn import checks, initializers

# What the rest of the library reads about this cell (the protocol: `gated_rnn/__init__.py`).
NUM_GATES = 4
BLOCKS = (4,)  # `update` takes xp and hz whole (see `activate`)
UPDATE_READS_SUM = True
INITIALIZERS = ("kernel_init", "recurrent_init", "bias_init")  # b_f keeps UGI (`ugi`)
SUPPORTS_PROJ = False
TORCH_NAME = None  # PyTorch has no UR-LSTM
TORCH_HH_BIASES = ()


class Params(NamedTuple):
    w_x: jax.Array  # [I, 4H]  gates f, r, u, o
    w_h: jax.Array  # [H, 4H]
    b: jax.Array    # [4H]
    b_f: jax.Array  # [H]  the UGI forget bias: +b_f in f, -b_f in r


class Carry(NamedTuple):
    h: jax.Array  # [..., H]
    c: jax.Array  # [..., H]


def ugi(key: jax.Array, shape: tuple[int], dtype=jnp.float32) -> jax.Array:
    """Uniform gate initialization: `b_f = logit(u)`, u ~ U[1/H, 1 - 1/H], H = shape[0]."""
    (hidden,) = shape
    lo = 1.0 / max(hidden, 2)  # H = 1 would make the interval empty
    u = jax.random.uniform(key, shape, jnp.float32, lo, 1.0 - lo)
    return (jnp.log(u) - jnp.log1p(-u)).astype(dtype)


def init_params(key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                kernel_init=initializers.lecun_normal(),
                recurrent_init=initializers.orthogonal_gates(NUM_GATES),
                bias_init=initializers.zeros, forget_init=ugi) -> Params:
    """Draws `Params` for input size I and hidden size H (b_f by UGI)."""
    k_x, k_h, k_b, k_f = jax.random.split(key, 4)
    return Params(w_x=kernel_init(k_x, (input_size, NUM_GATES * hidden_size), dtype),
                  w_h=recurrent_init(k_h, (hidden_size, NUM_GATES * hidden_size), dtype),
                  b=bias_init(k_b, (NUM_GATES * hidden_size,), dtype),
                  b_f=forget_init(k_f, (hidden_size,), dtype))


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, *, dtype=jnp.float32) -> Carry:
    """Zero state: h, c `[*batch_shape, H]`."""
    zeros = jnp.zeros((*batch_shape, hidden_size), dtype)
    return Carry(h=zeros, c=zeros)


def zero_carry(params: Params, batch_shape: tuple[int, ...]) -> Carry:
    """`init_carry` with H and dtype read off `params`."""
    return init_carry(batch_shape, params.w_h.shape[0], dtype=params.w_h.dtype)


def project(params: Params, xs: jax.Array) -> jax.Array:
    """Carry-independent part `x @ W + b`: xs `[..., I]` -> `[..., 4H]` (b_f is added in
    `update`)."""
    checks.check_input(xs, params.w_x.shape[0], params.w_x.dtype, what="urlstm input")
    return xs @ params.w_x + checks.lift(params.b, xs.ndim)


def activate(params: Params, z: jax.Array) -> tuple[jax.Array, ...]:
    """The gates (f, r, u, o), each `[..., H]`, from the pre-activation z `[..., 4H]` (without
    b_f): one sigmoid over all 4H columns, u = tanh(z_u) = 2 sigma(2 z_u) - 1, as
    `lstm.activate` (why: XLA:CPU vectorizes a transcendental over a whole array)."""
    hidden = params.b_f.shape[-1]
    zero = jnp.zeros_like(params.b_f)
    shift = jnp.concatenate([params.b_f, -params.b_f, zero, zero])
    two = checks.lift(jnp.where(jnp.arange(NUM_GATES * hidden) // hidden == 2, 2, 1)
                      .astype(z.dtype), z.ndim)
    a = jax.nn.sigmoid((z + checks.lift(shift, z.ndim)) * two) * two - (two - 1)
    return tuple(jnp.split(a, NUM_GATES, axis=-1))


def effective_gate(f: jax.Array, r: jax.Array) -> jax.Array:
    """g = r (1 - (1 - f)^2) + (1 - r) f^2: the refined forget gate (keeps the state)."""
    return r * (1.0 - (1.0 - f) ** 2) + (1.0 - r) * f ** 2


def update(params: Params, carry: Carry, xp, hz) -> tuple[Carry, jax.Array]:
    """The elementwise rest of a step: xp = (x @ w_x + b,), hz = (carry.h @ w_h,), `[..., 4H]`.

    Split from `recur` for the fused scan (`gated_rnn.fused`), which does the matmuls itself.
    """
    f, r, u, o = activate(params, xp[0] + hz[0])
    g = effective_gate(f, r)
    c = g * carry.c + (1.0 - g) * u
    h = o * jnp.tanh(c)
    return Carry(h=h, c=c), h


def recur(params: Params, carry: Carry, xp: jax.Array) -> tuple[Carry, jax.Array]:
    """One step given the projected input xp `[..., 4H]`; returns (carry, h)."""
    return update(params, carry, (xp,), (carry.h @ params.w_h,))


def step(params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
    """One time step. x: `[..., I]`; carry: Carry with h, c `[..., H]`. Returns (carry, h)."""
    return recur(params, carry, project(params, x))


def internals(params: Params, carry: Carry, xp: jax.Array) -> dict:
    """The step's gates {f, r, g, keep = g}, each `[..., H]`, for `trace.run` (g, the effective
    gate, is what keeps the state)."""
    f, r, _, _ = activate(params, xp + carry.h @ params.w_h)
    g = effective_gate(f, r)
    return {"f": f, "r": r, "g": g, "keep": g}


def forget_bias_init(value: float) -> None:
    """None: UGI is the cell's own forget-gate init (`layers.Init.FORGET_BIAS` changes nothing)."""
    del value


def chrono_bias_init(max_len: int) -> None:
    """None: UGI is the cell's own forget-gate init (`layers.Init.CHRONO` changes nothing)."""
    del max_len
