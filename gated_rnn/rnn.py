"""Plain RNN (Elman): the baseline the gated cells are compared with.

    h' = tanh(W x + U h + b)          nonlinearity "tanh" (the default; this module's functions)
    h' = relu(W x + U h + b)          nonlinearity "relu" (`cell("relu")`; `irnn` is it with
                                      identity U, Le et al. 2015)

PyTorch's `nn.RNN(nonlinearity=...)`, modes "RNN_TANH" / "RNN_RELU". Its state dict does not
record the nonlinearity: the spec says it (`layers.Spec(cell="rnn", nonlinearity="relu")`).
`w_x: [I, H]`, `w_h: [H, H]`, `b: [H]`; row-vector layout (`x @ w_x`), as Flax `Dense`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gated_rnn import checks, initializers

# What the rest of the library reads about this cell (the protocol: `gated_rnn/__init__.py`).
NUM_GATES = 1
BLOCKS = (1,)  # `update` takes xp and hz whole
UPDATE_READS_SUM = True  # `update` reads xp and hz only as xp + hz
INITIALIZERS = ("kernel_init", "recurrent_init", "bias_init")
SUPPORTS_PROJ = False
TORCH_NAME = "RNN_TANH"  # nn.RNN(nonlinearity="tanh"); `cell("relu")` is "RNN_RELU"
TORCH_HH_BIASES = ()  # PyTorch's two biases are one sum, `b`


class Nonlinearity(enum.Enum):
    TANH = "tanh"
    RELU = "relu"


_ACTIVATIONS = {Nonlinearity.TANH: jnp.tanh, Nonlinearity.RELU: jax.nn.relu}
_TORCH_NAMES = {Nonlinearity.TANH: "RNN_TANH", Nonlinearity.RELU: "RNN_RELU"}


class Params(NamedTuple):
    w_x: jax.Array  # [I, H]
    w_h: jax.Array  # [H, H]
    b: jax.Array    # [H]


class Carry(NamedTuple):
    h: jax.Array  # [..., H]


def init_params(key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                kernel_init=initializers.lecun_normal(),
                recurrent_init=initializers.orthogonal_gates(NUM_GATES),
                bias_init=initializers.zeros) -> Params:
    """Draws `Params` for input size I and hidden size H (orthogonal U, Lecun-normal W, b = 0)."""
    k_x, k_h, k_b = jax.random.split(key, 3)
    return Params(w_x=kernel_init(k_x, (input_size, hidden_size), dtype),
                  w_h=recurrent_init(k_h, (hidden_size, hidden_size), dtype),
                  b=bias_init(k_b, (hidden_size,), dtype))


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, *, dtype=jnp.float32) -> Carry:
    """Zero state: h `[*batch_shape, H]`."""
    return Carry(h=jnp.zeros((*batch_shape, hidden_size), dtype))


def zero_carry(params: Params, batch_shape: tuple[int, ...]) -> Carry:
    """`init_carry` with H and dtype read off `params`."""
    return init_carry(batch_shape, params.w_h.shape[0], dtype=params.w_h.dtype)


def project(params: Params, xs: jax.Array) -> jax.Array:
    """Carry-independent part `x @ W + b`: xs `[..., I]` -> `[..., H]`."""
    checks.check_input(xs, params.w_x.shape[0], params.w_x.dtype, what="rnn input")
    return xs @ params.w_x + checks.lift(params.b, xs.ndim)


def recur(params: Params, carry: Carry, xp: jax.Array, *,
          nonlinearity: Nonlinearity = Nonlinearity.TANH) -> tuple[Carry, jax.Array]:
    """One step given the projected input xp `[..., H]`; returns (carry, h)."""
    return update(params, carry, (xp,), (carry.h @ params.w_h,), nonlinearity=nonlinearity)


def update(params: Params, carry: Carry, xp, hz, *,
           nonlinearity: Nonlinearity = Nonlinearity.TANH) -> tuple[Carry, jax.Array]:
    """The elementwise rest of a step: xp = (x @ w_x + b,), hz = (carry.h @ w_h,), `[..., H]`.

    Split from `recur` for the fused scan (`gated_rnn.fused`), which does the matmuls itself.
    """
    del params  # the RNN's update has no parameters of its own
    h = _ACTIVATIONS[nonlinearity](xp[0] + hz[0])
    return Carry(h=h), h


def step(params: Params, carry: Carry, x: jax.Array, *,
         nonlinearity: Nonlinearity = Nonlinearity.TANH) -> tuple[Carry, jax.Array]:
    """One time step. x: `[..., I]`; carry: Carry with h `[..., H]`. Returns (carry, h)."""
    checks.check_step(x, carry, what="rnn.step")
    return recur(params, carry, project(params, x), nonlinearity=nonlinearity)


def forget_bias_init(value: float) -> None:
    """No gate keeps the state, so no bias to set: `layers.Init.FORGET_BIAS` changes nothing."""
    del value


def chrono_bias_init(max_len: int) -> None:
    """No gate keeps the state, so no bias to set: `layers.Init.CHRONO` changes nothing."""
    del max_len


@dataclasses.dataclass(frozen=True)
class Cell:
    """The RNN with its nonlinearity bound: a cell like this module (same protocol)."""

    nonlinearity: Nonlinearity = Nonlinearity.TANH

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
    forget_bias_init = staticmethod(forget_bias_init)
    chrono_bias_init = staticmethod(chrono_bias_init)

    @property
    def TORCH_NAME(self) -> str:  # noqa: N802 (a constant of the cell, as in the modules)
        return _TORCH_NAMES[self.nonlinearity]

    def update(self, params: Params, carry: Carry, xp, hz) -> tuple[Carry, jax.Array]:
        return update(params, carry, xp, hz, nonlinearity=self.nonlinearity)

    def recur(self, params: Params, carry: Carry, xp: jax.Array) -> tuple[Carry, jax.Array]:
        return recur(params, carry, xp, nonlinearity=self.nonlinearity)

    def step(self, params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        return step(params, carry, x, nonlinearity=self.nonlinearity)


def cell(nonlinearity: Nonlinearity | str = Nonlinearity.TANH) -> Cell:
    """An RNN cell object for `scan.run` and `layers`, e.g. `rnn.cell("relu")`."""
    return Cell(checks.enum_value(Nonlinearity, nonlinearity, "rnn nonlinearity"))
