"""The paths of `scan.run` for cells whose step is linear in the state (minGRU, minLSTM).

A cell qualifies if it has `coefficients(params, xp) -> (a, b)`, each `[..., H]`, with its step
`h' = a * h + b` (a in (0, 1), elementwise, from the projected input only). Both paths compute
a and b for every step at once (one vectorized pass over `[T, B, H]`, no step loop), then:

- sequential (`parallel=False`, `scan.Impl.FUSED` for these cells, AUTO on CPU): a
  `jax.lax.scan` whose body is one multiply-add, `h = a_t * h + b_t`;
- parallel (`parallel=True`, `scan.Impl.PARALLEL`, AUTO on accelerators): the pairs
  (A_t, B_t) with h_t = A_t * h_0 + B_t,

      A_t = prod_{s<=t} a_s,   B_t = sum_{s<=t} b_s prod_{s<r<=t} a_r,

  are a prefix "product" under the associative operator (a1, b1) . (a2, b2) = (a1 a2, b1 a2 + b2),
  which `jax.lax.associative_scan` computes in O(log T) depth.

Linear space, not the log space of Feng et al. 2024: their scan (Heinsen's) takes cumulative
sums of log a and divides by the cumulative product, which underflows without logs; the pair
operator above never divides, a product that underflows to 0 is the right limit (a < 1), and it
needs no exp/log per element per level. It agrees with the sequential form to float32 rounding
(tests/test_new_cells.py) and measured about twice as fast as the log-space scan on CPU (README
"Performance"). h_0 enters linearly, so any carry works, zero included, with an exact gradient.
Arrays are time-major: xs `[T, B, I]`, ys `[T, B, H]`.

Variable lengths: `scan.run` reverses each sequence inside its valid part first (for
`reverse=True`), so the padding is always at the end; the recurrence then runs unmasked, the
outputs past each length are zeroed and the final carry is the state at the last valid step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def supports(cell: Any) -> bool:
    """Whether `run` can take this cell: it has `coefficients(params, xp)`."""
    return getattr(cell, "coefficients", None) is not None


def _combine(left, right):
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, b1 * a2 + b2


def _multiply_add(h, ab):
    h = ab[0] * h + ab[1]
    return h, h


def run(cell: Any, params: Any, xs: jax.Array, carry: Any, seq_lengths: jax.Array | None, *,
        reverse: bool = False, parallel: bool = True, unroll: int = 1) -> tuple[Any, jax.Array]:
    """Runs a linear-recurrence cell over time-major xs `[T, B, I]` from `carry` (h `[B, H]`).

    Args:
      cell: a cell with `project`, `coefficients` and a Carry of one field, h.
      params: its Params.
      xs: `[T, B, I]`.
      carry: the initial Carry, h `[B, H]`.
      seq_lengths: `[B]` lengths (padding at the end of each sequence), or None for all T.
      reverse: run from the last step to the first (only without seq_lengths; with them
        `scan.run` has already reversed each valid part).
      parallel: the associative scan (log depth) if True, else the multiply-add loop.
      unroll: steps per iteration of the multiply-add loop (`jax.lax.scan`'s unroll).

    Returns:
      (carry, ys): the carry at each sequence's last valid step, ys `[T, B, H]` (zeros past
      each length).
    """
    if reverse:
        xs = jnp.flip(xs, axis=0)
    a, b = cell.coefficients(params, cell.project(params, xs))
    h0 = carry.h
    if parallel:
        a_prod, b_sum = jax.lax.associative_scan(_combine, (a, b), axis=0)
        ys = a_prod * h0[None] + b_sum
    else:
        ys = jax.lax.scan(_multiply_add, h0, (a, b), unroll=unroll)[1]
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
