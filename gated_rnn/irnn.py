"""IRNN (Le, Jaitly & Hinton 2015, "A simple way to initialize recurrent networks of rectified
linear units"): a ReLU RNN whose recurrent kernel starts as the identity and bias at zero.

    h' = relu(W x + U h + b),   U = I, b = 0 at init (W: Lecun normal here)

So at init, with x = 0, the state is copied unchanged: the classic adding-problem baseline. It
is `rnn.cell("relu")` with these initializers (PyTorch's `nn.RNN(nonlinearity="relu")`,
whose weights it loads). `layers.Init.TORCH` replaces the identity by PyTorch's uniform draw.
Le et al. draw W from a small Gaussian; Lecun normal is this library's input-kernel default.

`w_x: [I, H]`, `w_h: [H, H]`, `b: [H]`, as `rnn`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gated_rnn import initializers, rnn

_CELL = rnn.cell(rnn.Nonlinearity.RELU)

# What the rest of the library reads about this cell (the protocol: `gated_rnn/__init__.py`).
Params, Carry = rnn.Params, rnn.Carry
NUM_GATES = rnn.NUM_GATES
BLOCKS = rnn.BLOCKS
UPDATE_READS_SUM = rnn.UPDATE_READS_SUM
INITIALIZERS = rnn.INITIALIZERS
SUPPORTS_PROJ = False
TORCH_NAME = "RNN_RELU"  # nn.RNN(nonlinearity="relu")
TORCH_HH_BIASES = ()


def identity(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """The identity `[H, H]` (an `init(key, shape, dtype)` initializer; key unused)."""
    del key
    return jnp.eye(*shape, dtype=dtype)


def init_params(key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                kernel_init=initializers.lecun_normal(), recurrent_init=identity,
                bias_init=initializers.zeros) -> Params:
    """Draws `Params` for input size I and hidden size H: U = identity, b = 0, W Lecun normal."""
    return rnn.init_params(key, input_size, hidden_size, dtype=dtype, kernel_init=kernel_init,
                           recurrent_init=recurrent_init, bias_init=bias_init)


init_carry = rnn.init_carry
zero_carry = rnn.zero_carry
project = rnn.project
update = _CELL.update
recur = _CELL.recur
step = _CELL.step
forget_bias_init = rnn.forget_bias_init
chrono_bias_init = rnn.chrono_bias_init
