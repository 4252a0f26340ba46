"""Initializers that matter for long memory, as `init(key, shape, dtype) -> Array` factories.

The signature is `jax.nn.initializers`', so every factory here can be handed to Flax's
`self.param` as it is, and the cells' `init_params` use the very same functions: the
functional path and the Flax modules draw identical values from identical keys.

Gate layout: a bias or kernel of width `G*H` holds the gates side by side in the order the cell
module's docstring lists them (LSTM i, f, g, o; GRU r, z, n). The gate-aware factories take the
index of the gate they write (`gate`, `num_gates`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

zeros = jax.nn.initializers.zeros


def drawn_in_float32(init: Initializer) -> Initializer:
    """`init` for half-precision dtypes (bfloat16, float16): drawn in float32, then cast.

    As Flax NNX does: the orthogonal initializer's QR has no bfloat16 kernel on CPU, and a
    uniform or normal draw in bfloat16 is coarser than the rounding of a float32 draw. So a
    half-precision init is exactly the float32 init rounded to the dtype, for every scheme.
    """

    def wrapped(key, shape, dtype=jnp.float32):
        dtype = jnp.dtype(dtype)
        if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
            return init(key, shape, jnp.float32).astype(dtype)
        return init(key, shape, dtype)

    return wrapped


def lecun_normal(*args, **kwargs) -> Initializer:
    """`jax.nn.initializers.lecun_normal`, drawn in float32 for half dtypes."""
    return drawn_in_float32(jax.nn.initializers.lecun_normal(*args, **kwargs))


def glorot_normal(*args, **kwargs) -> Initializer:
    """`jax.nn.initializers.glorot_normal`, drawn in float32 for half dtypes."""
    return drawn_in_float32(jax.nn.initializers.glorot_normal(*args, **kwargs))


def orthogonal_gates(num_gates: int, scale: float = 1.0) -> Initializer:
    """Recurrent kernel `[H, G*H]`: an independent orthogonal `[H, H]` block per gate.

    One orthogonal `[H, G*H]` matrix would make only its rows orthonormal; each gate's own
    `h -> gate` map is what must preserve norms for long memory (Saxe et al. 2014), so each
    block is orthogonal by itself.
    """
    ortho = jax.nn.initializers.orthogonal(scale)

    def init(key, shape, dtype=jnp.float32):
        rows, cols = shape
        if cols % num_gates:
            raise ValueError(f"orthogonal_gates: shape {shape} has no {num_gates} equal gate blocks")
        blocks = [ortho(k, (rows, cols // num_gates), dtype)
                  for k in jax.random.split(key, num_gates)]
        return jnp.concatenate(blocks, axis=-1)

    return drawn_in_float32(init)


def uniform(scale: float) -> Initializer:
    """`U(-scale, scale)`; PyTorch's default for every RNN weight and bias is `scale = 1/sqrt(H)`."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return drawn_in_float32(init)


def torch_default(hidden_size: int) -> Initializer:
    """PyTorch's `nn.LSTM`/`nn.GRU`/`nn.RNN` default: `U(-1/sqrt(H), 1/sqrt(H))`."""
    return uniform(1.0 / hidden_size**0.5)


def gate_constant(gate: int, num_gates: int, value: float) -> Initializer:
    """Bias `[G*H]` with `value` in gate block `gate` and zeros elsewhere."""

    def init(key, shape, dtype=jnp.float32):
        del key
        (width,) = shape
        h = width // num_gates
        return jnp.zeros(shape, dtype).at[gate * h:(gate + 1) * h].set(value)

    return init


def forget_gate_bias(value: float = 1.0) -> Initializer:
    """LSTM bias `[4H]` with the forget gate (block 1 of i, f, g, o) at `value`.

    Jozefowicz et al. 2015: +1 lets gradients flow through c from the start; it is Keras'
    `unit_forget_bias` and Haiku's default, while Flax's LSTMCell starts at 0.
    """
    return gate_constant(gate=1, num_gates=4, value=value)


def chrono_values(key: jax.Array, size: int, max_len: int, dtype=jnp.float32) -> jax.Array:
    """`log(U[1, max_len - 1])`: Tallec & Ollivier 2018's bias for a gate that keeps the state."""
    if max_len < 3:
        raise ValueError(f"chrono: max_len must be >= 3 (U[1, max_len - 1]), got {max_len}")
    return jnp.log(jax.random.uniform(key, (size,), dtype, 1.0, max_len - 1.0))


def chrono_lstm(max_len: int) -> Initializer:
    """LSTM bias `[4H]`: `b_f ~ log(U[1, T_max - 1])`, `b_i = -b_f`, others 0 (chrono init).

    Put it in the one bias a cell has: where two biases are summed (PyTorch), writing it into
    both would double it.
    """

    def init(key, shape, dtype=jnp.float32):
        (width,) = shape
        h = width // 4
        b_f = chrono_values(key, h, max_len, dtype)
        return jnp.concatenate([-b_f, b_f, jnp.zeros((2 * h,), dtype)])

    return drawn_in_float32(init)


def chrono_gru(max_len: int, *, keep_gate_sign: float = 1.0) -> Initializer:
    """GRU bias `[3H]` (r, z, n): the update gate z plays the forget gate's role.

    With `h' = (1 - z) n + z h` (z keeps the old state, `keep_gate_sign=+1`) the z bias is
    `+log(U[1, T_max - 1])`; with `h' = (1 - z) h + z h~` (z takes the new state) it is the
    negation (`keep_gate_sign=-1`), since `sigma(-a) = 1 - sigma(a)`.
    """

    def init(key, shape, dtype=jnp.float32):
        (width,) = shape
        h = width // 3
        b_z = keep_gate_sign * chrono_values(key, h, max_len, dtype)
        return jnp.concatenate([jnp.zeros((h,), dtype), b_z, jnp.zeros((h,), dtype)])

    return drawn_in_float32(init)
