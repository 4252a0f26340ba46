"""minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs all we needed?"): a GRU
whose gate and candidate read the input only, so a layer is a linear recurrence in h.

    z = sigma(W_z x + b_z)                update gate (takes the new state)
    h~ = g(W_h x + b_h)                   g(v) = v + 1/2 if v >= 0 else sigma(v)   (g > 0)
    h' = (1 - z) * h + z * h~  =  a * h + b,   a = 1 - z,  b = z * h~

With a and b known for every step up front (`coefficients`), `scan.run` computes them in one
vectorized pass and runs the recurrence as a multiply-add loop (`impl="fused"`, AUTO on CPU) or
a log-depth `jax.lax.associative_scan` (`impl="parallel"`, AUTO on accelerators): both in
`gated_rnn.linear_scan`, in linear space (why not the paper's log space: there).
`recur`/`step` are the sequential form (the paper's inference mode), `impl="scan"`; the three
agree to float32 rounding (tests/test_new_cells.py).

The paper's g keeps the state positive, which its log-space scan needs; here the initial state
enters linearly (`linear_scan`), so any carry works, and the zero carry is h = 0 (the paper feeds
g(h_0)). The paper's models add norms and MLPs around the cell; `layers` stacks only the cells.

Layout: `w_x: [I, 2H]`, `b: [2H]` in the order z, h~. No recurrent kernel (no `w_h`), so no
fused path and no PyTorch counterpart.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gated_rnn import checks, initializers

# What the rest of the library reads about this cell (the protocol: `gated_rnn/__init__.py`).
NUM_GATES = 2
BLOCKS = (1, 1)
UPDATE_READS_SUM = False
update = None  # no recurrent matmul to fuse: `coefficients` gives the linear-scan paths
INITIALIZERS = ("kernel_init", "bias_init")
SUPPORTS_PROJ = False
TORCH_NAME = None
TORCH_HH_BIASES = ()


class Params(NamedTuple):
    w_x: jax.Array  # [I, 2H]  blocks z, h~
    b: jax.Array    # [2H]


class Carry(NamedTuple):
    h: jax.Array  # [..., H]


def g(v: jax.Array) -> jax.Array:
    """The paper's positive activation: v + 1/2 for v >= 0, sigma(v) below (continuous at 0)."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


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
    """`x @ W + b`: xs `[..., I]` -> `[..., 2H]` (the whole step's matmul)."""
    checks.check_input(xs, params.w_x.shape[0], params.w_x.dtype, what="mingru input")
    return xs @ params.w_x + checks.lift(params.b, xs.ndim)


def recur(params: Params, carry: Carry, xp: jax.Array) -> tuple[Carry, jax.Array]:
    """The sequential step from xp `[..., 2H]`: h' = (1 - z) h + z g(k_h). Returns (carry, h)."""
    del params
    k_z, k_h = jnp.split(xp, NUM_GATES, axis=-1)
    z = jax.nn.sigmoid(k_z)
    h = (1.0 - z) * carry.h + z * g(k_h)
    return Carry(h=h), h


def step(params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
    """One time step. x: `[..., I]`; carry: Carry with h `[..., H]`. Returns (carry, h)."""
    return recur(params, carry, project(params, x))


def coefficients(params: Params, xp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a, b), each `[..., H]`, with h' = a h + b, from xp `[..., 2H]`: a = 1 - z, b = z g(k_h)."""
    del params
    k_z, k_h = jnp.split(xp, NUM_GATES, axis=-1)
    z = jax.nn.sigmoid(k_z)
    return 1.0 - z, z * g(k_h)


def internals(params: Params, carry: Carry, xp: jax.Array) -> dict:
    """The step's gates {z, a = keep = 1 - z}, each `[..., H]`, for `trace.run`."""
    del params, carry
    z = jax.nn.sigmoid(jnp.split(xp, NUM_GATES, axis=-1)[0])
    return {"z": z, "a": 1.0 - z, "keep": 1.0 - z}


def forget_bias_init(value: float) -> initializers.Initializer:
    """Bias `[2H]` with z at -value: the keep gate 1 - z at sigma(value) (`Init.FORGET_BIAS`)."""
    return initializers.gate_constant(gate=0, num_gates=NUM_GATES, value=-value)


def chrono_bias_init(max_len: int) -> initializers.Initializer:
    """Chrono bias `[2H]` (`Init.CHRONO`): b_z = -log(U[1, T_max - 1]), so the keep gate 1 - z
    has Tallec & Ollivier's timescales (the rule for h' = z h~ + (1 - z) h, REFERENCE.md §8)."""

    def init(key, shape, dtype=jnp.float32):
        (width,) = shape
        h = width // NUM_GATES
        b_z = -initializers.chrono_values(key, h, max_len, dtype)
        return jnp.concatenate([b_z, jnp.zeros((h,), dtype)])

    return init
