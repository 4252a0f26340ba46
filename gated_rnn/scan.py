"""Run any cell over time: one function for every cell, variable lengths and direction.

`run` hoists the carry-independent input projection (`cell.project`) out of the loop — one
large `[B*T, I] @ [I, G*H]` matmul — and scans only the recurrent part (`cell.recur`) with
`jax.lax.scan`. Public arrays are batch-major `[B, T, ...]`; `run` swaps to time-major once
and back once.

Variable lengths (`seq_lengths [B]`): each sequence stops at its own length. Steps past it hold
the carry (so the final carry is the one at the last valid step) and output zeros. With
`reverse=True` each sequence is reversed inside its valid part, as PyTorch's packed sequences
are, so the backward direction of a bidirectional layer starts at each sequence's own last
element, not at the padding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import checks


def _concrete(x) -> np.ndarray | None:
    """x as a NumPy array when its values are known at trace time, else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_seq_lengths(seq_lengths, batch_size: int, num_steps: int) -> jax.Array:
    """Validates seq_lengths `[B]` (integers in [0, T] when concrete) and returns it as an array."""
    shape = tuple(np.shape(seq_lengths))
    if shape != (batch_size,):
        raise ValueError(f"seq_lengths: expected shape (B,) = ({batch_size},), got {shape}")
    seq_lengths = jnp.asarray(seq_lengths)
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise ValueError(f"seq_lengths: expected an integer dtype, got {seq_lengths.dtype.name}")
    values = _concrete(seq_lengths)
    if values is not None and values.size and (values.min() < 0 or values.max() > num_steps):
        raise ValueError(f"seq_lengths: values must lie in [0, T={num_steps}], got "
                         f"min {values.min()}, max {values.max()}")
    return seq_lengths


def reverse_padded(xs: jax.Array, seq_lengths: jax.Array) -> jax.Array:
    """Reverses each sequence of xs `[B, T, ...]` within its first `seq_lengths[b]` steps.

    Positions past the length stay where they are. The map is its own inverse.
    """
    t = jnp.arange(xs.shape[1])[None, :]
    lengths = seq_lengths[:, None]
    idx = jnp.where(t < lengths, lengths - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, idx, axis=1)


def mask_from_lengths(seq_lengths: jax.Array, num_steps: int) -> jax.Array:
    """Boolean mask `[B, T]`: True at the valid steps of each sequence."""
    return jnp.arange(num_steps)[None, :] < seq_lengths[:, None]


def run(cell: Any, params: Any, xs: jax.Array, *, carry: Any = None,
        seq_lengths: jax.Array | None = None, reverse: bool = False,
        unroll: int = 1) -> tuple[Any, jax.Array]:
    """Runs `cell` over a batch of sequences.

    Args:
      cell: a cell module (`rnn`, `lstm`, `gru`) or object (`gru.cell(...)`) with
        `project`, `recur` and `zero_carry`.
      params: the cell's Params.
      xs: [B, T, I] inputs.
      carry: initial Carry with [B, H] fields; zeros if None.
      seq_lengths: [B] integer lengths in [0, T], or None for all T.
      reverse: run from the last valid step to the first.
      unroll: steps per loop iteration of `jax.lax.scan`.

    Returns:
      (final_carry, ys): the carry after each sequence's last valid step, and
      ys [B, T, H] (zeros past each sequence's length), in input order.
    """
    if np.ndim(xs) != 3:
        raise ValueError(f"scan.run: xs must be [B, T, I], got shape {tuple(np.shape(xs))}")
    batch, num_steps, _ = np.shape(xs)
    expected = jax.eval_shape(lambda: cell.zero_carry(params, (batch,)))
    if carry is None:
        carry = cell.zero_carry(params, (batch,))
    else:
        checks.check_carry(carry, expected, what="scan.run carry")

    mask = None
    if seq_lengths is not None:
        seq_lengths = check_seq_lengths(seq_lengths, batch, num_steps)
        if reverse:
            xs = reverse_padded(xs, seq_lengths)
        mask = jnp.swapaxes(mask_from_lengths(seq_lengths, num_steps), 0, 1)  # [T, B]

    xp_TxBxG = jnp.swapaxes(cell.project(params, xs), 0, 1)

    if mask is None:
        def body(carry, xp):
            return cell.recur(params, carry, xp)
        inputs = xp_TxBxG
    else:
        def body(carry, inp):
            xp, m = inp
            new_carry, y = cell.recur(params, carry, xp)
            m = m[:, None]
            new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(m, n, o), new_carry, carry)
            return new_carry, jnp.where(m, y, jnp.zeros_like(y))
        inputs = (xp_TxBxG, mask)

    carry, ys_TxBxH = jax.lax.scan(body, carry, inputs, unroll=unroll,
                                   reverse=reverse and mask is None)
    ys = jnp.swapaxes(ys_TxBxH, 0, 1)
    if mask is not None and reverse:
        ys = reverse_padded(ys, seq_lengths)
    return carry, ys
