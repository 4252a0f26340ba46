"""A look inside a cell: every step's carry and gate activations.

    carry, seen = trace.run(lstm, params, xs, seq_lengths=lengths)
    seen["f"]      # [B, T, H] the forget gate at every step
    seen["keep"]   # [B, T, H] the gate that keeps the state (every gated cell has it)
    seen["c"]      # [B, T, H] the cell state after every step

What a cell shows is its `internals(params, carry, xp)` (the protocol, `gated_rnn/__init__.py`):
LSTM i, f, g, o; GRU r, z, n; UR-LSTM f, r, g; minGRU z, a; minLSTM f, i, a; each also as
`keep`, the weight of the old state (LSTM f, GRU z in its keep direction, UR-LSTM g, min-cells
a), and the carry's fields after the step (h, and c for the LSTMs). The plain and ReLU RNN have
no gates (ValueError).

A separate, plain `jax.lax.scan` over `cell.recur` (the `impl="scan"` path) that also records
the gates: `scan.run` and its fast paths are untouched, so tracing costs nothing when unused.
Lengths and reverse are as in `scan.run` (steps past a length hold the carry and show zeros).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import checks, scan


def run(cell: Any, params: Any, xs: jax.Array, *, carry: Any = None,
        seq_lengths: jax.Array | None = None, reverse: bool = False) -> tuple[Any, dict]:
    """Runs `cell` over xs `[B, T, I]` and records each step's internals.

    Args:
      cell: a cell with `internals` (lstm, gru, urlstm, mingru, minlstm; `spec.cell_fns`).
      params: its Params.
      xs: `[B, T, I]`.
      carry: the initial Carry (`[B, H]` fields), or None for zeros.
      seq_lengths: `[B]` lengths in [0, T], or None.
      reverse: run from each sequence's last valid step to its first.

    Returns:
      (final_carry, seen): the carry after each sequence's last valid step (as `scan.run`), and
      {name: `[B, T, H]`}: the cell's internals at each step and the carry after it (zeros past
      each length), in input order.
    """
    if getattr(cell, "internals", None) is None:
        raise ValueError(f"trace.run: cell {cell!r} has no internals (no gates to show)")
    xs = checks.from_tensor(xs)
    if np.ndim(xs) != 3:
        raise ValueError(f"trace.run: xs must be [B, T, I], got shape {tuple(np.shape(xs))}")
    batch, num_steps = np.shape(xs)[:2]
    carry = cell.zero_carry(params, (batch,)) if carry is None else carry
    lengths = (jnp.full((batch,), num_steps, jnp.int32) if seq_lengths is None
               else scan.check_seq_lengths(checks.from_tensor(seq_lengths), batch, num_steps))
    if reverse:
        xs = scan.reverse_padded(xs, lengths)
    mask_TxB = jnp.swapaxes(scan.mask_from_lengths(lengths, num_steps), 0, 1)
    xp_TxBxG = jnp.swapaxes(cell.project(params, xs), 0, 1)

    def body(carry, inp):
        xp, m = inp
        m = m[:, None]
        seen = cell.internals(params, carry, xp)
        new, _ = cell.recur(params, carry, xp)
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(m, n, o), new, carry)
        seen.update(new._asdict())
        return new, {k: jnp.where(m, v, jnp.zeros_like(v)) for k, v in seen.items()}

    carry, seen = jax.lax.scan(body, carry, (xp_TxBxG, mask_TxB))
    seen = {k: jnp.swapaxes(v, 0, 1) for k, v in seen.items()}
    if reverse:
        seen = {k: scan.reverse_padded(v, lengths) for k, v in seen.items()}
    return carry, seen
