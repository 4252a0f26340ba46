"""The parallel path of `scan.run` for cells whose step is linear in the state (minGRU, minLSTM).

A cell qualifies if it has `log_coefficients(params, xp) -> (log_a, log_b)`, each `[..., H]`,
with its step `h' = a * h + b` (a, b > 0, elementwise, from the projected input only). Then

    h_t = A_t * h_0 + B_t,   A_t = prod_{s<=t} a_s,   B_t = sum_{s<=t} b_s prod_{s<r<=t} a_r

and the pairs (log A_t, log B_t) are a prefix "sum" under the associative operator

    (la1, lb1) . (la2, lb2) = (la1 + la2, logaddexp(lb1 + la2, lb2))

which `jax.lax.associative_scan` computes in O(log T) depth: the log-space scan of Feng et al.
2024. h_0 enters linearly (not through a log), so any carry works, zero included, and its
gradient is exact. Arrays are time-major: xs `[T, B, I]`, ys `[T, B, H]`.

Variable lengths: `scan.run` reverses each sequence inside its valid part first (for
`reverse=True`), so the padding is always at the end; the scan then runs unmasked, the outputs
past each length are zeroed and the final carry is the state at the last valid step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def supports(cell: Any) -> bool:
    """Whether `run` can take this cell: it has `log_coefficients(params, xp)`."""
    return getattr(cell, "log_coefficients", None) is not None


def _combine(left, right):
    la1, lb1 = left
    la2, lb2 = right
    return la1 + la2, jnp.logaddexp(lb1 + la2, lb2)


def run(cell: Any, params: Any, xs: jax.Array, carry: Any, seq_lengths: jax.Array | None, *,
        reverse: bool = False) -> tuple[Any, jax.Array]:
    """Runs a linear-recurrence cell over time-major xs `[T, B, I]` from `carry` (h `[B, H]`).

    Args:
      cell: a cell with `project`, `log_coefficients` and a Carry of one field, h.
      params: its Params.
      xs: `[T, B, I]`.
      carry: the initial Carry, h `[B, H]`.
      seq_lengths: `[B]` lengths (padding at the end of each sequence), or None for all T.
      reverse: run from the last step to the first (only without seq_lengths; with them
        `scan.run` has already reversed each valid part).

    Returns:
      (carry, ys): the carry at each sequence's last valid step, ys `[T, B, H]` (zeros past
      each length).
    """
    if reverse:
        xs = jnp.flip(xs, axis=0)
    log_a, log_b = cell.log_coefficients(params, cell.project(params, xs))
    log_A, log_B = jax.lax.associative_scan(_combine, (log_a, log_b), axis=0)
    h0 = carry.h
    ys = jnp.exp(log_A) * h0[None] + jnp.exp(log_B)
    if seq_lengths is None:
        final = ys[-1] if ys.shape[0] else h0
    else:
        mask = (jnp.arange(ys.shape[0])[:, None] < seq_lengths[None, :])[..., None]  # [T, B, 1]
        ys = jnp.where(mask, ys, jnp.zeros_like(ys))
        last = jnp.clip(seq_lengths - 1, 0, None)[None, :, None]  # [1, B, 1]
        final = jnp.take_along_axis(ys, last, axis=0)[0]
        final = jnp.where((seq_lengths > 0)[:, None], final, h0)
    if reverse:
        ys = jnp.flip(ys, axis=0)
    return carry._replace(h=final), ys
