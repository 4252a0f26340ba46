"""Run any cell over time: one function for every cell, variable lengths and direction.

`run` hoists the carry-independent input projection (`cell.project`) out of the step loop —
large `[B*T, I] @ [I, G*H]` matmuls (per chunk of steps in the FUSED path) — and loops only
over the recurrent part. Public arrays are batch-major `[B, T, ...]` by default; `run` swaps to
time-major once and back once. With `time_major=True` (PyTorch's default `batch_first=False`,
Flax's `time_major`) they are `[T, B, ...]` and the FUSED path swaps nothing (it is time-major
inside).

Variable lengths (`seq_lengths [B]`): each sequence stops at its own length. Steps past it hold
the carry (so the final carry is the one at the last valid step) and output zeros. With
`reverse=True` each sequence is reversed inside its valid part, as PyTorch's packed sequences
are, so the backward direction of a bidirectional layer starts at each sequence's own last
element, not at the padding.

Implementations (`impl`, all pinned against a Python loop over `cell.step`): FUSED
(`gated_rnn.fused`: gate blocks, chunked projection, a custom VJP with the weight
gradients outside the reverse loop, optional remat and bfloat16 matmuls) is what AUTO picks for
rnn, lstm and the reset-after GRU; SCAN (`jax.lax.scan` over `cell.recur`, differentiated by
JAX, optional remat via `jax.checkpoint`) for the rest. Cells linear in the state (mingru,
minlstm) have two paths in `gated_rnn.linear_scan`, both with the step's coefficients computed
for all T at once: FUSED, a multiply-add loop (AUTO on CPU), and PARALLEL, a log-depth
associative scan (AUTO on accelerators; on CPU it costs more than the loop: README
"Performance"). CUDNN (`gated_rnn.cudnn`) is an opt-in LSTM path for GPUs.
"""

from __future__ import annotations

import enum
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import checks, cudnn, fused, linear_scan


def _concrete(x) -> np.ndarray | None:
    """x as a NumPy array when its values are known at trace time, else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_seq_lengths(seq_lengths, batch_size: int, num_steps: int) -> jax.Array:
    """Validates seq_lengths `[B]` and returns it as an array: the one place lengths are checked.

    Concrete lengths (an eager call, or constants under `jit`) outside [0, T] raise. Traced
    lengths (arguments of a jitted function) cannot raise: they are clamped into [0, T] here, so
    a length above T acts as T and a negative one as 0, and no index runs out of bounds (which
    gave NaN with `reverse=True`). Check them before the `jit` boundary if that would hide a bug.
    """
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
    if values is None:
        seq_lengths = jnp.clip(seq_lengths, 0, num_steps)
    return seq_lengths


def check_options(*, unroll: Any, remat: Any, chunk_size: Any, matmul_dtype: Any) -> Any:
    """The one rule for the loop options of `run` and `layers.Plan`; returns matmul_dtype as a
    `jnp.dtype` (or None).

    unroll: an integer >= 1 on every path (not a bool: `lax.scan` reads True as a full unroll
    and the fused loop as 1; write `unroll=T` for a full unroll). remat: a bool. chunk_size:
    None or an integer >= 1. matmul_dtype: None or a floating dtype (an integer one would round
    the operands).
    """
    checks.check_int(unroll, "unroll")
    if not isinstance(remat, (bool, np.bool_)):
        raise ValueError(f"remat: expected a bool, got {remat!r}")
    checks.check_int(chunk_size, "chunk_size", optional=True)
    return checks.check_float_dtype(matmul_dtype, "matmul_dtype", optional=True)


def _forward_mode(tree: Any) -> bool:
    """Whether the innermost autodiff of a leaf of `tree` is forward mode (`jax.jvp`, `jacfwd`).

    The FUSED path has a custom VJP, which JAX cannot differentiate in forward mode, so AUTO
    takes SCAN then. Reverse mode (`grad`, `vjp`: linearize tracers, or a JVP tracer with a
    staged tangent) is what the custom VJP serves, also under an outer jvp (`hessian` =
    jacfwd(jacrev)), so the walk stops at the first autodiff tracer; other tracers (vmap's) are
    walked through to see a jvp under a vmap.
    """
    from jax.interpreters import ad, partial_eval as pe
    for leaf in jax.tree_util.tree_leaves(tree):
        while isinstance(leaf, jax.core.Tracer):
            if isinstance(leaf, ad.JVPTracer):
                if not isinstance(leaf.tangent, pe.JaxprTracer):
                    return True
                break
            leaf = getattr(leaf, "val", None)  # vmap's tracer holds the inner one; others end
    return False


def reverse_padded(xs: jax.Array, seq_lengths: jax.Array, *,
                   time_major: bool = False) -> jax.Array:
    """Reverses each sequence of xs `[B, T, ...]` (`[T, B, ...]` if time_major) within its first
    `seq_lengths[b]` steps.

    Positions past the length stay where they are. The map is its own inverse.
    """
    time_axis = 0 if time_major else 1
    t = jnp.arange(xs.shape[time_axis])[None, :]
    lengths = seq_lengths[:, None]
    idx = jnp.where(t < lengths, lengths - 1 - t, t)  # [B, T]
    if time_major:
        idx = idx.T
    idx = idx.reshape(idx.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, idx, axis=time_axis)


def mask_from_lengths(seq_lengths: jax.Array, num_steps: int) -> jax.Array:
    """Boolean mask `[B, T]`: True at the valid steps of each sequence."""
    return jnp.arange(num_steps)[None, :] < seq_lengths[:, None]


class Impl(enum.Enum):
    """How `run` executes the loop. All give the same numbers (tests pin each against a loop)."""

    AUTO = "auto"    # FUSED where the cell supports it (PARALLEL for linear cells off CPU); SCAN
    SCAN = "scan"    # `jax.lax.scan` over `cell.recur`, differentiated by JAX
    FUSED = "fused"  # the cell's fast loop: `gated_rnn.fused` (chunked projection, custom VJP,
    #                  optional remat), or for linear cells `linear_scan`'s multiply-add loop
    CUDNN = "cudnn"  # `gated_rnn.cudnn`: LSTM on a GPU via cuDNN (opt-in; untested on a GPU)
    PARALLEL = "parallel"  # `gated_rnn.linear_scan`: associative scan (mingru, minlstm)


def _name(cell: Any) -> str:
    """A cell's name for messages: its module (`gated_rnn.lstm`) or repr (`gru.cell(...)`)."""
    return getattr(cell, "__name__", None) or repr(cell)


def resolve_impl(cell: Any, impl: Impl | str) -> Impl:
    """The concrete implementation (not AUTO) `run` uses for `cell`; raises for a bad one."""
    impl = checks.enum_value(Impl, impl, "impl")
    if impl is Impl.AUTO:
        if linear_scan.supports(cell) and jax.default_backend() != "cpu":
            return Impl.PARALLEL  # on CPU the multiply-add loop is faster (README, measured)
        return Impl.FUSED if fused.supports(cell) or linear_scan.supports(cell) else Impl.SCAN
    if impl is Impl.PARALLEL and not linear_scan.supports(cell):
        raise ValueError(f"impl='parallel' needs a cell linear in its state (coefficients: "
                         f"mingru, minlstm); got {cell!r}. Use impl='scan'.")
    if impl is Impl.FUSED and not (fused.supports(cell) or linear_scan.supports(cell)):
        raise ValueError(f"impl='fused' needs a cell with an update(params, carry, xp, hz) split "
                         f"(rnn, lstm, gru reset_after) or one linear in its state (mingru, "
                         f"minlstm); got {cell!r}. Use impl='scan'.")
    return impl


def takes_matmul_dtype(cell: Any, impl: Impl) -> bool:
    """Whether the resolved `impl` has matmuls for `matmul_dtype`: FUSED on a matmul cell (a
    linear cell's FUSED path is a multiply-add loop)."""
    return impl is Impl.FUSED and not linear_scan.supports(cell)


def run(cell: Any, params: Any, xs: jax.Array, *, carry: Any = None,
        seq_lengths: jax.Array | None = None, reverse: bool = False,
        unroll: int = 1, impl: Impl | str = Impl.AUTO, remat: bool = False,
        chunk_size: int | None = None, matmul_dtype: Any = None,
        time_major: bool = False) -> tuple[Any, jax.Array]:
    """Runs `cell` over a batch of sequences.

    Args:
      cell: a cell module (`rnn`, `lstm`, `gru`) or object (`gru.cell(...)`) with
        `project`, `recur` and `zero_carry`.
      params: the cell's Params.
      xs: [B, T, I] inputs ([T, B, I] if time_major): a jax.Array, or an array-like (NumPy, a
        torch CPU tensor), converted here.
      carry: initial Carry with [B, H] fields (arrays or array-likes); zeros if None.
      seq_lengths: [B] integer lengths in [0, T], or None for all T. Concrete values outside
        raise; traced ones (under `jit`) are clamped into [0, T] (`check_seq_lengths`).
      reverse: run from the last valid step to the first.
      unroll: steps per loop iteration (an integer >= 1 on every path; `unroll=T` unrolls
        fully). The options unroll, remat, chunk_size, matmul_dtype follow one rule,
        `check_options`, shared with `layers.Plan`.
      impl: `Impl` or its name; AUTO takes FUSED where the cell supports it, and SCAN under
        forward-mode autodiff (`jax.jvp`, `jacfwd`: FUSED has a custom VJP, which JAX cannot
        differentiate forwards; an explicit impl='fused' then raises; `hessian`, a jvp of a
        vjp, works on FUSED). A jvp of an
        already-jitted function is invisible here: pass impl='scan' for it. CUDNN (LSTM on a
        GPU, opt-in, untested on a GPU so far) takes none of the options below.
      remat: rematerialize in the backward pass: keep the carry only every `chunk_size` steps
        (default about sqrt(T)) and recompute the steps between. Cuts a training step's memory
        from O(T) gate activations to O(sqrt(T)) for about one more forward pass.
      chunk_size: steps per chunk of the FUSED path's input projection (and of remat);
        None picks `fused.default_chunk_size`.
      matmul_dtype: None, or a dtype (e.g. `jnp.bfloat16`) for the FUSED path's matmul
        operands; the state and the gate math stay in the params' dtype.
      time_major: xs and ys are [T, B, ...] (PyTorch's batch_first=False) instead of
        [B, T, ...]. The FUSED path then transposes nothing.

    Returns:
      (final_carry, ys): the carry after each sequence's last valid step, and
      ys [B, T, H] ([T, B, H] if time_major; zeros past each sequence's length), in input order.
    """
    layout = "[T, B, I]" if time_major else "[B, T, I]"
    xs = checks.from_tensor(xs)
    if np.ndim(xs) != 3:
        raise ValueError(f"scan.run: xs must be {layout}, got shape {tuple(np.shape(xs))}")
    matmul_dtype = check_options(unroll=unroll, remat=remat, chunk_size=chunk_size,
                                 matmul_dtype=matmul_dtype)
    params_type = getattr(cell, "Params", None)
    if params_type is not None and not isinstance(params, params_type):
        raise ValueError(f"scan.run: params of type {type(params).__module__}."
                         f"{type(params).__qualname__} do not belong to the cell {_name(cell)}, "
                         f"which takes {params_type.__module__}.{params_type.__qualname__}")
    forward_mode = _forward_mode((params, xs, carry, seq_lengths))
    impl = checks.enum_value(Impl, impl, "impl")
    if forward_mode and impl is Impl.AUTO and matmul_dtype is None:
        impl = Impl.SCAN  # the fused path has a custom VJP only, which JAX cannot jvp
    impl = resolve_impl(cell, impl)
    linear = impl in (Impl.FUSED, Impl.PARALLEL) and linear_scan.supports(cell)  # plain JAX
    if forward_mode and impl is not Impl.SCAN and not linear:
        raise ValueError(f"forward-mode autodiff (jax.jvp, jacfwd) needs impl='scan' "
                         f"(layers.Plan(impl='scan')); impl={impl.value!r} has a custom VJP only")
    if impl is Impl.CUDNN:
        cudnn.check(cell, params)
        if remat or chunk_size is not None or matmul_dtype is not None or unroll != 1:
            raise ValueError("impl='cudnn' takes none of remat, chunk_size, matmul_dtype, unroll")
    if matmul_dtype is not None and not takes_matmul_dtype(cell, impl):
        raise ValueError(f"matmul_dtype={matmul_dtype.name!r} needs impl='fused' on a cell with "
                         f"a recurrent matmul (got {impl.value!r} for {_name(cell)})")
    num_steps, batch = np.shape(xs)[:2] if time_major else np.shape(xs)[1::-1]
    jax.eval_shape(cell.project, params, xs)  # the cell's input checks
    expected = jax.eval_shape(lambda: cell.zero_carry(params, (batch,)))
    if carry is None:
        carry = cell.zero_carry(params, (batch,))
    else:
        carry = jax.tree_util.tree_map(checks.from_tensor, carry)
        checks.check_carry(carry, expected, what="scan.run carry")

    mask = None
    if seq_lengths is not None:
        seq_lengths = check_seq_lengths(checks.from_tensor(seq_lengths), batch, num_steps)
        if reverse:
            xs = reverse_padded(xs, seq_lengths, time_major=time_major)
        mask = jnp.swapaxes(mask_from_lengths(seq_lengths, num_steps), 0, 1)  # [T, B]

    scan_reverse = reverse and mask is None
    if num_steps == 0:
        impl, linear = Impl.SCAN, False
    if impl is Impl.CUDNN:  # batch-major inside
        xs_BxTxI = jnp.swapaxes(xs, 0, 1) if time_major else xs
        lengths = jnp.full((batch,), num_steps, jnp.int32) if seq_lengths is None else seq_lengths
        if reverse and seq_lengths is None:
            xs_BxTxI = reverse_padded(xs_BxTxI, lengths)
        carry, ys = cudnn.run(params, xs_BxTxI, carry, lengths)
        ys = reverse_padded(ys, lengths) if reverse else ys
        return carry, jnp.swapaxes(ys, 0, 1) if time_major else ys
    if linear:  # remat and chunk_size concern matmul step loops: none here
        carry, ys_TxBxH = linear_scan.run(
            cell, params, jnp.asarray(xs) if time_major else jnp.swapaxes(xs, 0, 1), carry,
            seq_lengths, reverse=scan_reverse, parallel=impl is Impl.PARALLEL, unroll=unroll)
    elif impl is Impl.FUSED:
        carry, ys_TxBxH = fused.run(cell, params,
                                    jnp.asarray(xs) if time_major else jnp.swapaxes(xs, 0, 1),
                                    carry, mask, reverse=scan_reverse, unroll=unroll,
                                    chunk_size=chunk_size, remat=remat,
                                    matmul_dtype=matmul_dtype)
    else:
        carry, ys_TxBxH = _scan(cell, params, xs, carry, mask, reverse=scan_reverse,
                                unroll=unroll, remat=remat, chunk_size=chunk_size,
                                time_major=time_major)
    ys = ys_TxBxH if time_major else jnp.swapaxes(ys_TxBxH, 0, 1)
    if mask is not None and reverse:
        ys = reverse_padded(ys, seq_lengths, time_major=time_major)
    return carry, ys


def _scan(cell, params, xs, carry, mask, *, reverse, unroll, remat, chunk_size, time_major):
    """The SCAN implementation: hoisted projection, `jax.lax.scan` over `cell.recur`."""
    xp = cell.project(params, xs)
    xp_TxBxG = xp if time_major else jnp.swapaxes(xp, 0, 1)

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

    if not remat:
        return jax.lax.scan(body, carry, inputs, unroll=unroll, reverse=reverse)
    # Remat: an outer scan over chunks whose inner scan JAX recomputes in the backward pass.
    num_steps = xp_TxBxG.shape[0]
    k = min(num_steps, fused.default_chunk_size(num_steps, xp_TxBxG.shape[1], remat=True)
            if chunk_size is None else chunk_size)
    pad = -num_steps % k
    if pad:
        if mask is None:
            mask = jnp.ones(xp_TxBxG.shape[:2], bool)
            inputs = (xp_TxBxG, mask)

            def body(carry, inp, _body=body):
                xp, m = inp
                new_carry, y = _body(carry, xp)
                m = m[:, None]
                new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(m, n, o),
                                                   new_carry, carry)
                return new_carry, jnp.where(m, y, jnp.zeros_like(y))
        inputs = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]), inputs)
    chunks = jax.tree_util.tree_map(lambda a: a.reshape(-1, k, *a.shape[1:]), inputs)

    @jax.checkpoint
    def outer(carry, chunk):
        return jax.lax.scan(body, carry, chunk, unroll=unroll, reverse=reverse)

    carry, ys = jax.lax.scan(outer, carry, chunks, reverse=reverse)
    ys = ys.reshape(-1, *ys.shape[2:])
    return carry, ys[:num_steps]
