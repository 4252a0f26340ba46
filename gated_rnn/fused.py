"""The fast path of `scan.run`: chunked projection, gate blocks, a custom VJP, remat.

A cell qualifies if its step is `cell.update(params, carry, xp, hz)` on the gate blocks of
`xp = x @ w_x + b` and `hz = carry.h @ w_h` (the cell protocol, `gated_rnn/__init__.py`): `rnn`,
`lstm` (with or without projection) and the RESET_AFTER `gru` (RESET_BEFORE has a second,
r-dependent matmul and no `update`; `scan.run` keeps the plain path for it).

Forward: a scan over chunks of K steps (one chunk, the whole sequence, when T*B <= 4096 rows:
see `default_chunk_size`). Each chunk projects its inputs in one `[K*B, I] @ [I, G*H]` matmul
(hoisted out of the step loop, but never a whole long-sequence buffer, which at T = 1000 costs
more in fresh pages than the hoisting saves) and splits the result into the column blocks the
cell's `update` takes (the cell's `BLOCKS`: the LSTM takes all 4H columns as one block and
computes its gates full width, `lstm.activate`; the GRU takes one contiguous `[K, B, H]` copy per
gate). Then it scans the steps, each one matmul `[B, P] @ [P, G*H]` (one, not one per gate:
XLA:CPU spreads a large one over several cores), the bias (added here, where it fuses into the
update) and the cell's update. Why blocks: a fusion that applies exp/tanh to column slices of
the step's dynamically sliced input compiled to scalar code on XLA:CPU, as costly as the matmul
(checked in the generated code).

Backward (`jax.custom_vjp`): the reverse step loop does only the `[B, G*H] @ [G*H, P]` matmul
and elementwise work (the update's VJP, recomputed from the stored inputs); the weight
gradients `dw_h = H_prev^T dZ`, `dw_x = X^T dZ`, `db` are computed once per chunk as
`[K*B]`-long matmuls (autodiff of a plain scan instead does outer products in every step and
carries `dw_h` through the loop), written as `A^T B` so that XLA:CPU reads both operands in
place.

Rematerialization (`remat=True`): the forward pass keeps only the carry at each chunk start;
the backward pass recomputes each chunk's steps before reversing them. Memory falls from
O(T) stored gate pre-activations to O(T / K + K), about 2 sqrt(T) with K = sqrt(T), for one
more forward pass.

Optional `matmul_dtype` (e.g. bfloat16): the matmuls take operands in that dtype and
accumulate in the state's dtype; the state and the gate math stay in the params' dtype.

Arrays here are time-major: xs `[T, B, I]`, mask `[T, B]`, ys `[T, B, P]`.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import checks

_ROWS_PER_CHUNK = 1024  # K*B rows per projection matmul without remat (see default_chunk_size)
_ROWS_WHOLE = 4096  # up to this many T*B rows, one chunk: the whole sequence at once


def supports(cell: Any) -> bool:
    """Whether `run` can take this cell: it has an `update(params, carry, xp, hz)` split."""
    return getattr(cell, "update", None) is not None


def _blocks(cell: Any, a: jax.Array) -> tuple:
    """a `[..., G*H]` split by columns into the blocks the cell's `update` takes (its `BLOCKS`,
    in units of H)."""
    sizes = cell.BLOCKS
    if len(sizes) == 1:
        return (a,)
    unit = a.shape[-1] // sum(sizes)
    return tuple(jnp.split(a, unit * np.cumsum(sizes)[:-1], axis=-1))


def default_chunk_size(num_steps: int, batch_size: int, *, remat: bool) -> int:
    """Steps per chunk: about sqrt(T) with remat; otherwise T (one chunk) if T*B <= 4096, else
    about 1024 / B (so each chunk's projection is a ~1024-row matmul). A divisor of T near the
    target is preferred (no tail).

    Why one chunk while it fits: the chunk loop's stacked residuals cost a zero-fill and a
    copy. Why chunks for long sequences: the fresh pages of one large buffer cost more than
    hoisting the whole projection saves.
    """
    if num_steps <= 1:
        return 1
    if not remat and num_steps * batch_size <= _ROWS_WHOLE:
        return num_steps
    target = math.isqrt(num_steps) if remat else max(1, _ROWS_PER_CHUNK // max(batch_size, 1))
    target = min(target, num_steps)
    for k in sorted(range(max(1, (target + 1) // 2), min(num_steps, 2 * target) + 1),
                    key=lambda k: (abs(k - target), k)):
        if num_steps % k == 0:
            return k
    return target


class _Static(NamedTuple):
    """Hashable configuration (a `nondiff_argnums` argument of the custom VJP)."""
    cell: Any
    reverse: bool
    unroll: int
    chunk_size: int
    remat: bool
    matmul_dtype: Any  # None or a dtype for the matmuls' operands


def _matmul(a: jax.Array, w: jax.Array, dtype) -> jax.Array:
    if dtype is None:
        return a @ w
    return jnp.matmul(a.astype(dtype), w.astype(dtype), preferred_element_type=a.dtype)


def _project(s: _Static, params: Any, x: jax.Array) -> jax.Array:
    """`x @ w_x` `[..., G*H]`. The bias is added in the step loop, where it fuses into the
    update (a separate pass would read and write the chunk's whole projection once more)."""
    return _matmul(x, params.w_x, s.matmul_dtype)


def _recurrent(s: _Static, w_h: jax.Array, h: jax.Array) -> tuple:
    """The gate blocks of `h @ w_h`: one matmul (big enough for XLA:CPU to use several cores
    at large B, which per-gate matmuls are not), split by columns."""
    return _blocks(s.cell, _matmul(h, w_h, s.matmul_dtype))


def _rest(params: Any) -> Any:
    """The params that `update` reads: all but w_x, b (the projection) and w_h (the matmul)."""
    return params._replace(w_x=None, w_h=None, b=None)


def _masked_update(s: _Static, rest, carry, xp, hz, m):
    new, y = s.cell.update(rest, carry, xp, hz)
    if m is None:
        return new, y
    m = m[:, None]
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(m, n, o), new, carry)
    return new, jnp.where(m, y, jnp.zeros_like(y))


def _scan(body, carry, xs, *, reverse: bool = False, unroll: int = 1):
    """`jax.lax.scan(body, carry, xs, reverse=reverse)`, as a `fori_loop` that indexes axis 0
    of xs and of the stacked outputs itself.

    Why: under `vmap` (many seeds in one step) `lax.scan` moves the vmapped axis of every
    input and output behind the time axis, a transpose of each whole array (the largest, the
    `[S, K, B, G*H]` projection); here the vmapped axis stays first and each step reads and
    writes a strided slice.
    """
    length = jax.tree_util.tree_leaves(xs)[0].shape[0]
    index = lambda a, t: jax.lax.dynamic_index_in_dim(a, t, 0, keepdims=False)  # noqa: E731
    x0 = jax.tree_util.tree_map(lambda a: index(a, 0), xs)
    shapes = jax.eval_shape(body, carry, x0)[1]
    ys = jax.tree_util.tree_map(lambda a: jnp.zeros((length, *a.shape), a.dtype), shapes)

    def step(i, state):
        carry, ys = state
        t = length - 1 - i if reverse else i
        carry, y = body(carry, jax.tree_util.tree_map(lambda a: index(a, t), xs))
        ys = jax.tree_util.tree_map(
            lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, t, 0), ys, y)
        return carry, ys

    return jax.lax.fori_loop(0, length, step, (carry, ys), unroll=unroll)


def _chunk(s: _Static, params, carry, x, m, keep_steps: bool):
    """K steps from `carry`: x [K, B, I], m [K, B] or None. Returns (carry, ys, residuals).

    The residuals (None unless `keep_steps`) are what the backward step needs: per step the
    carry before it and the update's inputs (the blocks of xp + hz if the cell's
    `UPDATE_READS_SUM`, else those of xp and of hz).
    """
    # One matmul for the chunk, then the column blocks `update` takes (for the GRU, per-gate
    # copies outside the step loop, so that no fusion in it reads column slices of the step's
    # dynamically sliced input).
    xp = _blocks(s.cell, _project(s, params, x))
    bias = _blocks(s.cell, params.b[None, :])  # [1, G*H]: one row, added to [B, ...]
    rest = _rest(params)

    def body(carry, inp):
        xp_t, m_t = inp
        xp_t = tuple(a + c for a, c in zip(xp_t, bias))
        hz = _recurrent(s, params.w_h, carry.h)
        new, y = _masked_update(s, rest, carry, xp_t, hz, m_t)
        if not keep_steps:
            return new, y
        if s.cell.UPDATE_READS_SUM:
            return new, (y, (carry, tuple(a + c for a, c in zip(xp_t, hz))))
        return new, (y, (carry, xp_t, hz))

    carry, out = _scan(body, carry, (xp, m), reverse=s.reverse, unroll=s.unroll)
    return (carry, *out) if keep_steps else (carry, out, None)


def _chunked(a, k: int):
    return None if a is None else a.reshape(a.shape[0] // k, k, *a.shape[1:])


def _unchunked(a):
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


class _Keep(enum.Enum):
    """What `_forward` keeps for the backward pass, per chunk."""

    NOTHING = enum.auto()  # the primal call: no backward pass
    STEPS = enum.auto()    # every step's residuals (see `_chunk`)
    STARTS = enum.auto()   # the carry at the chunk's start (remat: steps recomputed backward)


def _forward(s: _Static, params, carry, xs, mask, keep: _Keep):
    """The scan over chunks: (final carry, ys [T, B, P], what `keep` says, stacked by chunk)."""
    def outer(carry, inp):
        x, m = inp
        new, ys, res = _chunk(s, params, carry, x, m, keep is _Keep.STEPS)
        saved = {_Keep.NOTHING: None, _Keep.STEPS: res, _Keep.STARTS: carry}[keep]
        return new, (ys, saved)

    carry, (ys, saved) = _scan(outer, carry, (_chunked(xs, s.chunk_size),
                                              _chunked(mask, s.chunk_size)), reverse=s.reverse)
    return carry, _unchunked(ys), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _run(s: _Static, params, carry, xs, mask):
    carry, ys, _ = _forward(s, params, carry, xs, mask, _Keep.NOTHING)
    return carry, ys


def _run_fwd(s: _Static, params, carry, xs, mask):
    # With symbolic_zeros, each leaf comes as a CustomVJPPrimal(value, perturbed).
    is_primal = lambda a: isinstance(a, jax.custom_derivatives.CustomVJPPrimal)  # noqa: E731
    value = lambda t: jax.tree_util.tree_map(lambda a: a.value, t, is_leaf=is_primal)  # noqa: E731
    params, carry, xs_perturbed, xs, mask = (value(params), value(carry), xs.perturbed,
                                             xs.value, value(mask))
    keep = _Keep.STARTS if s.remat else _Keep.STEPS
    carry_out, ys, saved = _forward(s, params, carry, xs, mask, keep)
    # An empty array (vs None) tells the backward pass, by structure, to compute dxs.
    want_dxs = jnp.zeros((0,), xs.dtype) if xs_perturbed else None
    return (carry_out, ys), (params, xs, mask, saved, want_dxs)


def _instantiate(ct):
    """Cotangents with symbolic zeros (an unused output) replaced by zero arrays."""
    symbolic = jax.custom_derivatives.SymbolicZero
    return jax.tree_util.tree_map(
        lambda c: jnp.zeros(c.shape, c.dtype) if isinstance(c, symbolic) else c,
        ct, is_leaf=lambda c: isinstance(c, symbolic))


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


# The backward pass. Step t of the forward pass computed, from the carry c_{t-1} (with h_{t-1}):
#     xp_t = x_t @ w_x + b        hz_t = h_{t-1} @ w_h
#     (c_t, y_t) = update(rest, c_{t-1}, xp_t, hz_t)     (c_t = c_{t-1}, y_t = 0 where m_t = 0)
# With dc_t the cotangent of c_t (from step t + 1, or of the final carry) and dy_t that of y_t,
# the reverse loop (`_step_bwd`, t from last to first) computes
#     (drest_t, dc'_{t-1}, dxp_t, dhz_t) = VJP of `update` at its stored inputs, of (dc_t, dy_t)
#     dc_{t-1} = dc'_{t-1} with dh_{t-1} = dh'_{t-1} + dhz_t @ w_h^T
# (a cell whose update reads only a_t = xp_t + hz_t has dxp_t = dhz_t = da_t: one is stored).
# E.g. the LSTM, a = [a_i, a_f, a_g, a_o], dh = dy_t + dh_t, tc = tanh(c_t):
#     do = dh * tc           dc = dc_t + dh * o * (1 - tc^2)
#     di = dc * g   df = dc * c_{t-1}   dg = dc * i   dc'_{t-1} = dc * f
#     da = [di i (1 - i), df f (1 - f), dg (1 - g^2), do o (1 - o)]
# Then once per chunk (`_chunk_bwd`), over its K*B rows as long matmuls:
#     dw_h += H_prev^T dHZ     dw_x += X^T dXP     db += sum_rows dXP     dx_t = dxp_t @ w_x^T
# and drest (e.g. the GRU's b_hn, the LSTM's w_hr) is the sum of drest_t.


def _step_bwd(s: _Static, rest, w_h, acc, inp):
    """One step of the reverse loop (equations above): acc = (dc_t, drest so far)."""
    d_carry, d_rest = acc
    res_t, m_t, dy_t = inp
    sums = s.cell.UPDATE_READS_SUM
    if sums:
        c_t, pre_t = res_t
        zeros = tuple(jnp.zeros_like(a) for a in pre_t)
        _, vjp = jax.vjp(lambda r, c, a: _masked_update(s, r, c, a, zeros, m_t),
                         rest, c_t, pre_t)
        dr, dc, dxp = vjp((d_carry, dy_t))
        dhz = dxp
    else:
        _, vjp = jax.vjp(lambda r, c, a, z: _masked_update(s, r, c, a, z, m_t), rest, *res_t)
        dr, dc, dxp, dhz = vjp((d_carry, dy_t))
    dhz = jnp.concatenate(dhz, axis=-1)
    dxp = dhz if sums else jnp.concatenate(dxp, axis=-1)
    dc = dc._replace(h=dc.h + _matmul(dhz, w_h.T, s.matmul_dtype))
    return (dc, _tree_add(d_rest, dr)), (dxp, None if sums else dhz)


def _chunk_bwd(s: _Static, params, rest, want_dxs, acc, inp):
    """One chunk of the backward pass (last chunk first): its reverse step loop, then its
    weight gradients and dx (equations above)."""
    d_carry, d_w_h, d_w_x, d_b, d_rest = acc
    x, m, dy, saved_chunk = inp
    res = _chunk(s, params, saved_chunk, x, m, True)[2] if s.remat else saved_chunk
    step = functools.partial(_step_bwd, s, rest, params.w_h)
    (d_carry, d_rest), (dxps, dhzs) = _scan(
        step, (d_carry, d_rest), (res, m, dy), reverse=not s.reverse, unroll=s.unroll)
    dhzs = dxps if s.cell.UPDATE_READS_SUM else dhzs
    # Each written as A^T B: XLA:CPU then reads both operands in place (the VJP of `x @ w_x`
    # transposed dZ first, a copy of [K*B, G*H]).
    d_w_h = d_w_h + _matmul(_unchunked(res[0].h).T, _unchunked(dhzs), s.matmul_dtype)
    dz = _unchunked(dxps)
    d_w_x = d_w_x + _matmul(_unchunked(x).T, dz, s.matmul_dtype)
    d_b = d_b + jnp.sum(dz, axis=0)
    dx = None if want_dxs is None else _matmul(dxps, params.w_x.T, s.matmul_dtype)
    return (d_carry, d_w_h, d_w_x, d_b, d_rest), dx


def _run_bwd(s: _Static, res, cts):
    params, xs, mask, saved, want_dxs = res
    d_carry, d_ys = _instantiate(cts)
    k = s.chunk_size
    rest = _rest(params)
    zeros = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)  # noqa: E731
    init = (d_carry, jnp.zeros_like(params.w_h), jnp.zeros_like(params.w_x),
            jnp.zeros_like(params.b), zeros(rest))
    (d_carry, d_w_h, d_w_x, d_b, d_rest), dxs = _scan(
        functools.partial(_chunk_bwd, s, params, rest, want_dxs), init,
        (_chunked(xs, k), _chunked(mask, k), _chunked(d_ys, k), saved), reverse=not s.reverse)
    d_params = params._replace(
        w_x=d_w_x, b=d_b, w_h=d_w_h,
        **{f: getattr(d_rest, f) for f in params._fields if f not in ("w_x", "w_h", "b")})
    return d_params, d_carry, None if dxs is None else _unchunked(dxs), None


_run.defvjp(_run_fwd, _run_bwd, symbolic_zeros=True)


def run(cell: Any, params: Any, xs: jax.Array, carry: Any, mask: Optional[jax.Array] = None, *,
        reverse: bool = False, unroll: int = 1, chunk_size: Optional[int] = None,
        remat: bool = False, matmul_dtype: Any = None) -> tuple[Any, jax.Array]:
    """Runs `cell` over time-major inputs; same results as a `jax.lax.scan` over `cell.recur`.

    Args:
      cell: a cell for which `supports(cell)` holds.
      params: the cell's Params.
      xs: [T, B, I] inputs, time-major.
      carry: initial Carry with [B, H] fields.
      mask: [T, B] booleans, or None for all True; where False the carry is held and y is 0.
      reverse: scan from the last step to the first.
      unroll: steps per iteration of the step loops.
      chunk_size: steps per chunk (see the module docstring); None for `default_chunk_size`.
        If T is not a multiple, the remaining steps run as one more, shorter chunk.
      remat: keep only the carry at chunk starts and recompute the steps in the backward pass.
      matmul_dtype: None, or a dtype (e.g. jnp.bfloat16) for the matmuls' operands.

    Returns:
      (final_carry, ys [T, B, P]).
    """
    if not supports(cell):
        raise ValueError(f"fused.run: cell {cell!r} has no update(params, carry, xp, hz) split; "
                         "supported: rnn, lstm, gru.cell('reset_after')")
    checks.check_int(chunk_size, "chunk_size", optional=True)
    num_steps, batch = xs.shape[:2]
    k = default_chunk_size(num_steps, batch, remat=remat) if chunk_size is None else chunk_size
    k = min(int(k), max(num_steps, 1))
    statics = lambda k: _Static(cell, bool(reverse), int(unroll), k, bool(remat),  # noqa: E731
                                None if matmul_dtype is None else jnp.dtype(matmul_dtype))
    main = num_steps - num_steps % k
    if main == num_steps:
        return _run(statics(k), params, carry, xs, mask)
    # A tail of T % K steps: one more call with a single, shorter chunk, after the main part
    # in time (so first when reversed).
    parts = [(statics(k), slice(0, main)), (statics(num_steps - main), slice(main, None))]
    ys = [None, None]
    for i in ((1, 0) if reverse else (0, 1)):
        s, sl = parts[i]
        carry, ys[i] = _run(s, params, carry, xs[sl], None if mask is None else mask[sl])
    return carry, jnp.concatenate(ys)
