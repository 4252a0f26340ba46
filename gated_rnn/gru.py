"""GRU cell, in both published variants.

Gates r (reset), z (update), n (candidate); blocks in the order r, z, n (PyTorch's).

RESET_AFTER (the default; PyTorch, cuDNN, Flax, Equinox, Keras `reset_after=True`):

    r = sigma(W_r x + U_r h + b_r)        z = sigma(W_z x + U_z h + b_z)
    n = tanh(W_n x + b_n + r * (U_n h + b_hn))
    h' = (1 - z) * n + z * h              # z KEEPS the old state

  All three recurrent matmuls fuse into one `h @ U`. `b_hn` sits inside `r * (...)`, so it is a
  parameter of its own (PyTorch's `bias_hh` n block); `b` holds `b_ih + b_hh` for r and z and
  `b_in` for n.

RESET_BEFORE (Cho et al. 2014 / Chung et al. 2014, Haiku, Keras `reset_after=False`; the
textbook form and this project's design):

    r = sigma(W_r x + U_r h + b_r)        z = sigma(W_z x + U_z h + b_z)
    h~ = tanh(W_h x + U_h (r * h) + b_h)  # b_h = b_n + b_hn (b_hn is redundant here)
    h' = (1 - z) * h + z * h~             # z TAKES the new state

  It needs a second matmul per step that depends on r.

Sign conventions of z. Cho et al.'s own eq. 7 pairs reset-before with "z keeps"; Chung et al.
and Haiku with "z takes". Since sigma(-a) = 1 - sigma(a), a cell with one convention equals the
cell with the other convention on `flip_update_gate(params)`, which negates z's pre-activation
(its columns of `w_x` and `w_h` and its bias). So "reset-before, z keeps" (Cho eq. 7) is
`step(flip_update_gate(p), ..., variant=RESET_BEFORE)`, and a reset-after cell with "z takes"
is the same trick on RESET_AFTER.

Layout: `w_x: [I, 3H]`, `w_h: [H, 3H]`, `b: [3H]`, `b_hn: [H]`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gated_rnn import checks, initializers

# What the rest of the library reads about this cell (the protocol: `gated_rnn/__init__.py`).
# The module itself is the RESET_AFTER cell; `cell(variant)` binds either variant.
NUM_GATES = 3
BLOCKS = (1, 1, 1)  # `update` takes xp and hz as (r, z, n) blocks of H columns
UPDATE_READS_SUM = False  # `update` reads h_n apart from x_n (inside r * (...))
INITIALIZERS = ("kernel_init", "recurrent_init", "bias_init", "candidate_bias_init")
SUPPORTS_PROJ = False
TORCH_NAME = "GRU"  # RESET_AFTER only
TORCH_HH_BIASES = (("b_hn", 2),)  # b_hn is block 2 (n) of PyTorch's bias_hh, kept apart


class Variant(enum.Enum):
    RESET_AFTER = "reset_after"
    RESET_BEFORE = "reset_before"


class Params(NamedTuple):
    w_x: jax.Array   # [I, 3H]
    w_h: jax.Array   # [H, 3H]
    b: jax.Array     # [3H]
    b_hn: jax.Array  # [H] recurrent candidate bias (inside r * (...) for RESET_AFTER)


class Carry(NamedTuple):
    h: jax.Array  # [..., H]


def init_params(key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                kernel_init=initializers.lecun_normal(),
                recurrent_init=initializers.orthogonal_gates(NUM_GATES),
                bias_init=initializers.zeros,
                candidate_bias_init=initializers.zeros) -> Params:
    """Draws `Params` for input size I and hidden size H."""
    k_x, k_h, k_b, k_n = jax.random.split(key, 4)
    return Params(w_x=kernel_init(k_x, (input_size, NUM_GATES * hidden_size), dtype),
                  w_h=recurrent_init(k_h, (hidden_size, NUM_GATES * hidden_size), dtype),
                  b=bias_init(k_b, (NUM_GATES * hidden_size,), dtype),
                  b_hn=candidate_bias_init(k_n, (hidden_size,), dtype))


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, *, dtype=jnp.float32) -> Carry:
    """Zero state: h `[*batch_shape, H]`."""
    return Carry(h=jnp.zeros((*batch_shape, hidden_size), dtype))


def zero_carry(params: Params, batch_shape: tuple[int, ...]) -> Carry:
    """`init_carry` with H and dtype read off `params`."""
    return init_carry(batch_shape, params.w_h.shape[0], dtype=params.w_h.dtype)


def project(params: Params, xs: jax.Array) -> jax.Array:
    """Carry-independent part `x @ W + b`: xs `[..., I]` -> `[..., 3H]` (both variants)."""
    checks.check_input(xs, params.w_x.shape[0], params.w_x.dtype, what="gru input")
    return xs @ params.w_x + checks.lift(params.b, xs.ndim)


def recur(params: Params, carry: Carry, xp: jax.Array, *,
          variant: Variant = Variant.RESET_AFTER) -> tuple[Carry, jax.Array]:
    """One step given the projected input xp `[..., 3H]`; returns (carry, h)."""
    h = carry.h
    if variant is Variant.RESET_AFTER:
        return update(params, carry, jnp.split(xp, NUM_GATES, axis=-1),
                      jnp.split(h @ params.w_h, NUM_GATES, axis=-1))
    elif variant is Variant.RESET_BEFORE:
        hidden = h.shape[-1]
        x_r, x_z, x_n = jnp.split(xp, NUM_GATES, axis=-1)
        h_r, h_z = jnp.split(h @ params.w_h[:, :2 * hidden], 2, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        h_tilde = jnp.tanh(x_n + (r * h) @ params.w_h[:, 2 * hidden:]
                           + checks.lift(params.b_hn, h.ndim))
        h = (1.0 - z) * h + z * h_tilde
    else:
        raise ValueError(f"gru: unknown variant {variant!r}; valid: {[v.value for v in Variant]}")
    return Carry(h=h), h


def update(params: Params, carry: Carry, xp, hz) -> tuple[Carry, jax.Array]:
    """RESET_AFTER's elementwise rest of a step, from the gate blocks of its two matmuls.

    Split from `recur` for the fused scan (`gated_rnn.fused`), which does the matmuls itself,
    one per gate, so that no activation reads a column slice (XLA:CPU compiles those to scalar
    exp/tanh, as costly as the matmul), and takes `dw_h` out of the reverse loop. RESET_BEFORE
    has a second, r-dependent matmul, so it has no such split.

    Args:
      params: Params (only `b_hn` is read).
      carry: Carry with h `[..., H]`.
      xp: the (r, z, n) blocks of `x @ w_x + b`, each `[..., H]`.
      hz: the (r, z, n) blocks of `carry.h @ w_h`, each `[..., H]`.

    Returns:
      (carry, h).
    """
    (x_r, x_z, x_n), (h_r, h_z, h_n) = xp, hz
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + checks.lift(params.b_hn, h_n.ndim)))
    h = (1.0 - z) * n + z * carry.h
    return Carry(h=h), h


def step(params: Params, carry: Carry, x: jax.Array, *,
         variant: Variant = Variant.RESET_AFTER) -> tuple[Carry, jax.Array]:
    """One time step. x: `[..., I]`; carry: Carry with h `[..., H]`. Returns (carry, h)."""
    checks.check_step(x, carry, what="gru.step")
    return recur(params, carry, project(params, x), variant=variant)


def internals(params: Params, carry: Carry, xp: jax.Array, *,
              variant: Variant = Variant.RESET_AFTER) -> dict:
    """The step's gates {r, z, n, keep}, each `[..., H]`, for `trace.run`: n is the candidate
    (RESET_BEFORE's h~), keep the weight of the old state (z, or 1 - z for RESET_BEFORE)."""
    hidden = carry.h.shape[-1]
    x_r, x_z, x_n = jnp.split(xp, NUM_GATES, axis=-1)
    h_r, h_z = jnp.split(carry.h @ params.w_h[:, :2 * hidden], 2, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    b_hn = checks.lift(params.b_hn, carry.h.ndim)
    if variant is Variant.RESET_AFTER:
        n = jnp.tanh(x_n + r * (carry.h @ params.w_h[:, 2 * hidden:] + b_hn))
    else:
        n = jnp.tanh(x_n + (r * carry.h) @ params.w_h[:, 2 * hidden:] + b_hn)
    return {"r": r, "z": z, "n": n, "keep": z if variant is Variant.RESET_AFTER else 1.0 - z}


def flip_update_gate(params: Params) -> Params:
    """Converts params between the two update-gate sign conventions (an involution).

    Negates z's pre-activation: `sigma(-a) = 1 - sigma(a)` turns `(1 - z) n + z h` into
    `z' n + (1 - z') h`.
    """
    hidden = params.w_h.shape[0]
    sign = jnp.ones((NUM_GATES * hidden,), params.b.dtype).at[hidden:2 * hidden].set(-1)
    return params._replace(w_x=params.w_x * sign[None, :], w_h=params.w_h * sign[None, :],
                           b=params.b * sign)


def _keep_sign(variant: Variant) -> float:
    """+1 where z keeps the state (RESET_AFTER: sigma(+b) -> keep), -1 where it takes it."""
    return 1.0 if variant is Variant.RESET_AFTER else -1.0


def forget_bias_init(value: float, *, variant: Variant = Variant.RESET_AFTER
                     ) -> initializers.Initializer:
    """Bias `[3H]` with z at `value` towards keeping the state (`layers.Init.FORGET_BIAS`)."""
    return initializers.gate_constant(gate=1, num_gates=NUM_GATES,
                                      value=_keep_sign(variant) * value)


def chrono_bias_init(max_len: int, *, variant: Variant = Variant.RESET_AFTER
                     ) -> initializers.Initializer:
    """Chrono bias `[3H]` on z, keep direction, for T_max = max_len (`layers.Init.CHRONO`)."""
    return initializers.chrono_gru(max_len, keep_gate_sign=_keep_sign(variant))


@dataclasses.dataclass(frozen=True)
class Cell:
    """The GRU with its variant bound: a cell like the `rnn` and `lstm` modules (same protocol).

    RESET_BEFORE has no `update` split (a second, r-dependent matmul) and no PyTorch name.
    """

    variant: Variant = Variant.RESET_AFTER

    def __repr__(self) -> str:
        return f"gated_rnn.gru.cell({self.variant.value!r})"

    Params = Params
    Carry = Carry
    NUM_GATES = NUM_GATES
    BLOCKS = BLOCKS
    UPDATE_READS_SUM = UPDATE_READS_SUM
    INITIALIZERS = INITIALIZERS
    SUPPORTS_PROJ = SUPPORTS_PROJ
    TORCH_HH_BIASES = TORCH_HH_BIASES
    init_params = staticmethod(init_params)
    init_carry = staticmethod(init_carry)
    zero_carry = staticmethod(zero_carry)
    project = staticmethod(project)

    @property
    def update(self):
        """`update` for RESET_AFTER; None for RESET_BEFORE (no split: `scan.run` uses SCAN)."""
        return update if self.variant is Variant.RESET_AFTER else None

    @property
    def TORCH_NAME(self) -> str | None:  # noqa: N802 (a constant of the cell, as in the modules)
        return TORCH_NAME if self.variant is Variant.RESET_AFTER else None

    def recur(self, params: Params, carry: Carry, xp: jax.Array) -> tuple[Carry, jax.Array]:
        return recur(params, carry, xp, variant=self.variant)

    def step(self, params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        return step(params, carry, x, variant=self.variant)

    def internals(self, params: Params, carry: Carry, xp: jax.Array) -> dict:
        return internals(params, carry, xp, variant=self.variant)

    def forget_bias_init(self, value: float) -> initializers.Initializer:
        return forget_bias_init(value, variant=self.variant)

    def chrono_bias_init(self, max_len: int) -> initializers.Initializer:
        return chrono_bias_init(max_len, variant=self.variant)


def cell(variant: Variant | str = Variant.RESET_AFTER) -> Cell:
    """A GRU cell object for `scan.run` and `layers`, e.g. `gru.cell("reset_before")`."""
    return Cell(checks.enum_value(Variant, variant, "gru variant"))
