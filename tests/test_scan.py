"""Pins `scan.run` against per-sequence Python loops (float64 NumPy, independent of the scan).

Semantics checked: whole sequences, variable lengths (carry held, zeros past the length, final
carry at the last valid step), reverse with and without lengths (reversal inside the valid part,
as PyTorch's packed sequences), initial carries, unroll, jit / grad / vmap, and input errors.
A hypothesis test drives random shapes, lengths and options against the same reference.
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from gated_rnn import gru, initializers, lstm, rnn, scan
from tests import numpy_ref as ref

I, H = 3, 4


def _np(params):
    return {k: (None if v is None else np.asarray(v)) for k, v in params._asdict().items()}


def _cell_and_params(name, key, dtype):
    u = initializers.uniform(0.6)
    if name == "lstm":
        return lstm, lstm.init_params(key, I, H, dtype=dtype, kernel_init=u, recurrent_init=u,
                                      bias_init=u)
    if name == "rnn":
        return rnn, rnn.init_params(key, I, H, dtype=dtype, kernel_init=u, recurrent_init=u,
                                    bias_init=u)
    variant = "reset_before" if name == "gru_before" else "reset_after"
    return gru.cell(variant), gru.init_params(key, I, H, dtype=dtype, kernel_init=u,
                                              recurrent_init=u, bias_init=u,
                                              candidate_bias_init=u)


def _ref_step(name, p):
    """NumPy step over a state tuple whose first entry is the output h."""
    if name == "lstm":
        return lambda s, x: ref.lstm_step(p, s[0], s[1], x)
    if name == "rnn":
        return lambda s, x: (ref.rnn_step(p, s[0], x),)
    variant = "reset_before" if name == "gru_before" else "reset_after"
    return lambda s, x: (ref.gru_step(p, s[0], x, variant),)


def _reference(name, params, xs, lengths, reverse, init_state=None):
    """Loops over each sequence separately; returns (list of final states, ys [B, T, H])."""
    p, xs = _np(params), np.asarray(xs)
    step = _ref_step(name, p)
    finals, ys = [], []
    for b in range(xs.shape[0]):
        n_state = 2 if name == "lstm" else 1
        state = (tuple(np.zeros(H) for _ in range(n_state)) if init_state is None
                 else tuple(np.asarray(s[b]) for s in init_state))
        state, y = ref.run(step, state, xs[b], None if lengths is None else lengths[b], reverse)
        finals.append(state)
        ys.append(y)
    return finals, np.stack(ys)


def _assert_matches(name, carry, ys, finals, ys_ref, rtol):
    np.testing.assert_allclose(ys, ys_ref, rtol=rtol, atol=rtol)
    fields = ("h", "c") if name == "lstm" else ("h",)
    for i, f in enumerate(fields):
        np.testing.assert_allclose(getattr(carry, f), np.stack([s[i] for s in finals]),
                                   rtol=rtol, atol=rtol, err_msg=f"final carry {f}")


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "gru_before"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_run_matches_python_loop_float64(key, name, reverse, with_lengths):
    with enable_x64():
        kp, kx = jax.random.split(key)
        cell, p = _cell_and_params(name, kp, jnp.float64)
        xs = jax.random.normal(kx, (4, 6, I), jnp.float64)
        lengths = np.array([6, 2, 0, 5]) if with_lengths else None
        carry, ys = jax.jit(functools.partial(scan.run, cell, reverse=reverse))(
            p, xs, seq_lengths=lengths)
        finals, ys_ref = _reference(name, p, xs, lengths, reverse)
        _assert_matches(name, carry, ys, finals, ys_ref, rtol=1e-12)


def test_lengths_hold_the_carry_and_zero_the_outputs(key):
    """Direct statements of the semantics, beside the loop comparison."""
    cell, p = _cell_and_params("lstm", key, jnp.float32)
    xs = jax.random.normal(key, (3, 7, I))
    lengths = jnp.array([7, 3, 0])
    carry, ys = scan.run(cell, p, xs, seq_lengths=lengths)
    short, ys_short = scan.run(cell, p, xs[1:2, :3])
    np.testing.assert_allclose(carry.h[1], short.h[0], rtol=1e-6)
    np.testing.assert_allclose(carry.c[1], short.c[0], rtol=1e-6)
    np.testing.assert_allclose(ys[1, :3], ys_short[0], rtol=1e-6)
    assert not np.any(np.asarray(ys[1, 3:])) and not np.any(np.asarray(ys[2]))
    np.testing.assert_array_equal(carry.h[2], 0.0)  # length 0: the initial carry


def test_reverse_with_lengths_starts_at_each_last_element(key):
    cell, p = _cell_and_params("gru", key, jnp.float32)
    xs = jax.random.normal(key, (2, 5, I))
    carry, ys = scan.run(cell, p, xs, seq_lengths=jnp.array([5, 3]), reverse=True)
    # Sequence 1 alone, reversed by hand, run forward.
    c1, y1 = scan.run(cell, p, xs[1:2, 2::-1])
    np.testing.assert_allclose(carry.h[1], c1.h[0], rtol=1e-6)
    np.testing.assert_allclose(ys[1, :3], y1[0, ::-1], rtol=1e-6)
    # Full-length sequences: reverse=True equals flipping time.
    c0, y0 = scan.run(cell, p, xs[0:1, ::-1])
    np.testing.assert_allclose(ys[0], y0[0, ::-1], rtol=1e-6)


def test_initial_carry_is_used(key):
    with enable_x64():
        cell, p = _cell_and_params("lstm", key, jnp.float64)
        xs = jax.random.normal(key, (2, 4, I), jnp.float64)
        h0 = jax.random.normal(jax.random.fold_in(key, 1), (2, H), jnp.float64)
        c0 = jax.random.normal(jax.random.fold_in(key, 2), (2, H), jnp.float64)
        carry, ys = scan.run(cell, p, xs, carry=lstm.Carry(h=h0, c=c0))
        finals, ys_ref = _reference("lstm", p, xs, None, False, init_state=(h0, c0))
        _assert_matches("lstm", carry, ys, finals, ys_ref, rtol=1e-12)


@pytest.mark.parametrize("unroll", [2, 5])
def test_unroll_gives_the_same_numbers(key, unroll):
    cell, p = _cell_and_params("lstm", key, jnp.float32)
    xs = jax.random.normal(key, (2, 7, I))
    lengths = jnp.array([7, 4])
    a = scan.run(cell, p, xs, seq_lengths=lengths)
    b = scan.run(cell, p, xs, seq_lengths=lengths, unroll=unroll)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_grad_matches_python_loop_grad(key):
    """Gradient through the scan (hoisted projection + masking) == gradient of a plain step loop."""
    with enable_x64():
        cell, p = _cell_and_params("gru", key, jnp.float64)
        xs = jax.random.normal(key, (3, 5, I), jnp.float64)
        lengths = jnp.array([5, 1, 3])

        def loss_scan(p, xs):
            carry, ys = scan.run(cell, p, xs, seq_lengths=lengths, reverse=True)
            return jnp.sum(ys ** 2) + jnp.sum(jnp.sin(carry.h))

        def loss_loop(p, xs):
            total = 0.0
            for b in range(3):
                L = int(lengths[b])
                carry = cell.zero_carry(p, (1,))
                for t in reversed(range(L)):
                    carry, y = cell.step(p, carry, xs[b:b + 1, t])
                    total = total + jnp.sum(y ** 2)
                total = total + jnp.sum(jnp.sin(carry.h))
            return total

        g_scan = jax.grad(loss_scan, argnums=(0, 1))(p, xs)
        g_loop = jax.grad(loss_loop, argnums=(0, 1))(p, xs)
        for u, v in zip(jax.tree_util.tree_leaves(g_scan), jax.tree_util.tree_leaves(g_loop)):
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


def test_vmap_over_params_equals_separate_runs(key):
    cell, p0 = _cell_and_params("lstm", key, jnp.float32)
    _, p1 = _cell_and_params("lstm", jax.random.fold_in(key, 1), jnp.float32)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), p0, p1)
    xs = jax.random.normal(key, (2, 4, I))
    _, ys = jax.vmap(lambda p: scan.run(cell, p, xs))(stacked)
    np.testing.assert_allclose(ys[0], scan.run(cell, p0, xs)[1], rtol=1e-6)
    np.testing.assert_allclose(ys[1], scan.run(cell, p1, xs)[1], rtol=1e-6)


def test_jitted_run_does_not_recompile(key):
    cell, p = _cell_and_params("lstm", key, jnp.float32)
    f = jax.jit(functools.partial(scan.run, cell))
    xs = jax.random.normal(key, (2, 4, I))
    f(p, xs, seq_lengths=jnp.array([4, 2]))
    f(p, xs + 1.0, seq_lengths=jnp.array([1, 3]))
    assert f._cache_size() == 1


def test_errors_name_shapes(key):
    cell, p = _cell_and_params("lstm", key, jnp.float32)
    with pytest.raises(ValueError, match=r"\[B, T, I\].*\(4, 3\)"):
        scan.run(cell, p, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"I=3.*\(2, 4, 5\)"):
        scan.run(cell, p, jnp.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"seq_lengths.*\(2,\).*\(3,\)"):
        scan.run(cell, p, jnp.zeros((2, 4, I)), seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, T=4\].*max 5"):
        scan.run(cell, p, jnp.zeros((2, 4, I)), seq_lengths=jnp.array([1, 5]))
    with pytest.raises(ValueError, match=r"\[0, T=4\].*min -1"):
        scan.run(cell, p, jnp.zeros((2, 4, I)), seq_lengths=jnp.array([-1, 2]))
    with pytest.raises(ValueError, match="integer"):
        scan.run(cell, p, jnp.zeros((2, 4, I)), seq_lengths=jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"carry.h.*\(2, 4\).*\(3, 4\)"):
        scan.run(cell, p, jnp.zeros((2, 4, I)), carry=lstm.init_carry((3,), H))


@hypothesis.settings(max_examples=10, deadline=None, derandomize=True)
@hypothesis.given(
    name=st.sampled_from(["rnn", "lstm", "gru", "gru_before"]),
    batch=st.integers(1, 4), steps=st.integers(1, 6), reverse=st.booleans(),
    data=st.data())
def test_property_run_matches_loop(name, batch, steps, reverse, data):
    lengths = data.draw(st.one_of(st.none(), st.lists(st.integers(0, steps), min_size=batch,
                                                      max_size=batch)))
    seed = data.draw(st.integers(0, 2**16))
    with enable_x64():
        key = jax.random.key(seed)
        cell, p = _cell_and_params(name, key, jnp.float64)
        xs = jax.random.normal(jax.random.fold_in(key, 7), (batch, steps, I), jnp.float64)
        lengths = None if lengths is None else np.array(lengths)
        carry, ys = scan.run(cell, p, xs, seq_lengths=lengths, reverse=reverse)
        finals, ys_ref = _reference(name, p, xs, lengths, reverse)
        _assert_matches(name, carry, ys, finals, ys_ref, rtol=1e-11)


# --- time_major (PyTorch's batch_first=False) ----------------------------------------------

@pytest.mark.parametrize("impl", ["fused", "scan"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_time_major_run_matches_python_loop_float64(key, impl, reverse, with_lengths):
    with enable_x64():
        kp, kx, kh = jax.random.split(key, 3)
        cell, p = _cell_and_params("lstm", kp, jnp.float64)
        xs = jax.random.normal(kx, (4, 6, I), jnp.float64)  # [B, T, I] for the reference
        h0, c0 = jax.random.normal(kh, (2, 4, H), jnp.float64)
        lengths = np.array([6, 2, 0, 5]) if with_lengths else None
        carry, ys_TxBxH = scan.run(cell, p, jnp.swapaxes(xs, 0, 1), carry=lstm.Carry(h0, c0),
                                   seq_lengths=lengths, reverse=reverse, impl=impl,
                                   time_major=True)
        assert ys_TxBxH.shape == (6, 4, H)
        finals, ys_ref = _reference("lstm", p, xs, lengths, reverse, init_state=(h0, c0))
        _assert_matches("lstm", carry, np.swapaxes(ys_TxBxH, 0, 1), finals, ys_ref, rtol=1e-12)


def _primitives(fn, *args) -> list[str]:
    return [e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


def test_time_major_adds_no_transpose_around_the_fused_path(key):
    cell, p = _cell_and_params("lstm", key, jnp.float32)
    xs_TxBxI = jax.random.normal(key, (5, 2, I))
    time_major = _primitives(lambda x: scan.run(cell, p, x, time_major=True), xs_TxBxI)
    batch_major = _primitives(lambda x: scan.run(cell, p, x), jnp.swapaxes(xs_TxBxI, 0, 1))
    assert "custom_vjp_call" in time_major  # the fused path
    assert time_major.count("transpose") == 0
    assert batch_major.count("transpose") == 2  # one in, one out: what time_major saves
    # Nothing inside the fused call differs either: the same values, bit for bit.
    carry_t, ys_t = scan.run(cell, p, xs_TxBxI, time_major=True)
    carry_b, ys_b = scan.run(cell, p, jnp.swapaxes(xs_TxBxI, 0, 1))
    np.testing.assert_array_equal(ys_t, jnp.swapaxes(ys_b, 0, 1))
    np.testing.assert_array_equal(carry_t.c, carry_b.c)


def test_run_takes_numpy_inputs_and_names_the_time_major_layout(key):
    cell, p = _cell_and_params("gru", key, jnp.float32)
    xs = np.asarray(jax.random.normal(key, (2, 5, I)))
    carry, ys = scan.run(cell, p, xs, seq_lengths=np.array([5, 3]))
    carry_j, ys_j = scan.run(cell, p, jnp.asarray(xs), seq_lengths=jnp.array([5, 3]))
    np.testing.assert_array_equal(ys, ys_j)
    with pytest.raises(ValueError, match=r"xs must be \[T, B, I\], got shape \(5, 3\)"):
        scan.run(cell, p, xs[0], time_major=True)
    with pytest.raises(ValueError, match=r"seq_lengths: expected shape \(B,\) = \(5,\)"):
        scan.run(cell, p, xs, seq_lengths=np.array([5, 3]), time_major=True)


def test_traced_lengths_outside_zero_to_t_are_clamped_never_nan(key):
    # Under jit lengths cannot raise: T + 4 acts as T and -2 as 0, with reverse (which indexed
    # out of bounds and gave NaN before), in outputs and final carry. Eager calls still raise.
    # The clamp is in `check_seq_lengths`, before the implementations split.
    cell, params = _cell_and_params("lstm", key, jnp.float32)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (2, 5, I))
    run = jax.jit(lambda lengths: scan.run(cell, params, xs, seq_lengths=lengths, reverse=True,
                                           impl="scan"))
    carry, ys = run(jnp.array([9, -2]))
    want_carry, want_ys = run(jnp.array([5, 0]))
    assert not np.isnan(ys).any() and not np.isnan(carry.c).any()
    np.testing.assert_array_equal(ys, want_ys)
    np.testing.assert_array_equal(carry.h, want_carry.h)
    np.testing.assert_array_equal(ys[1], 0)
    with pytest.raises(ValueError, match=r"seq_lengths: values must lie in \[0, T=5\]"):
        scan.run(cell, params, xs, seq_lengths=jnp.array([9, -2]), reverse=True)


def test_forward_mode_jvp_works_on_the_default_path(key):
    # The cheap counterpart of the next test: jit(jvp) on the default path against grad . d.
    with enable_x64():
        cell, params = _cell_and_params("lstm", key, jnp.float64)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (1, 2, I), jnp.float64)
        d = jax.random.normal(jax.random.fold_in(key, 2), xs.shape, jnp.float64)
        f = lambda xs: jnp.sum(scan.run(cell, params, xs)[1] ** 2)  # noqa: E731
        np.testing.assert_allclose(jax.jit(lambda xs, d: jax.jvp(f, (xs,), (d,))[1])(xs, d),
                                   jnp.vdot(jax.grad(f)(xs), d), rtol=1e-10)


@pytest.mark.slow
def test_forward_mode_jvp_jacfwd_and_hessian_work_on_the_default_path(key):
    # The fused path has a custom VJP; under forward mode AUTO takes the scan (same numbers).
    # Pinned against reverse mode (grad) in float64.
    with enable_x64():
        cell, params = _cell_and_params("lstm", key, jnp.float64)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (1, 3, I), jnp.float64)
        d = jax.random.normal(jax.random.fold_in(key, 2), xs.shape, jnp.float64)
        # Not jax.jvp(jax.jit(f)): a jvp of an already-jitted function is invisible to
        # scan.run (README, "A whole sequence"); jit(jvp(f)) is seen.
        f = lambda xs: jnp.sum(scan.run(cell, params, xs)[1] ** 2)  # noqa: E731
        grad = jax.jit(jax.grad(lambda xs: jnp.sum(scan.run(cell, params, xs, impl="scan")[1]
                                                   ** 2)))
        jvp = jax.jit(lambda xs, d: jax.jvp(f, (xs,), (d,))[1])
        np.testing.assert_allclose(jvp(xs, d), jnp.vdot(grad(xs), d), rtol=1e-10)
        np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(xs), grad(xs), rtol=1e-10)
        hess = jax.jit(jax.hessian(f))(xs).reshape(xs.size, xs.size)
        # The Hessian-vector product from reverse mode: (grad(xs + e d) - grad(xs - e d)) / 2e.
        e = 1e-5
        np.testing.assert_allclose(hess @ d.ravel(),
                                   ((grad(xs + e * d) - grad(xs - e * d)) / (2 * e)).ravel(),
                                   rtol=1e-6, atol=1e-8)
        with pytest.raises(ValueError, match="forward-mode autodiff .* needs impl='scan'"):
            jax.jvp(lambda x: scan.run(cell, params, x, impl="fused")[1], (xs,), (d,))
        # hessian = jacfwd(jacrev): a jvp of the custom VJP, which the fused path serves.
        fused = lambda xs: jnp.sum(scan.run(cell, params, xs, impl="fused")[1] ** 2)  # noqa
        np.testing.assert_allclose(jax.jit(jax.hessian(fused))(xs).reshape(xs.size, xs.size),
                                   hess, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("carry_dtype, params_dtype", [(jnp.bfloat16, jnp.float32),
                                                       (jnp.float32, jnp.bfloat16)])
def test_a_carry_of_another_dtype_than_the_params_is_refused(key, carry_dtype, params_dtype):
    params = lstm.init_params(key, I, H, dtype=params_dtype)
    carry = lstm.init_carry((2,), H, dtype=carry_dtype)
    with pytest.raises(ValueError, match=f"carry.h: expected dtype "
                                         f"{jnp.dtype(params_dtype).name} .the params' dtype., "
                                         f"got {jnp.dtype(carry_dtype).name}"):
        scan.run(lstm, params, jnp.ones((2, 3, I), params_dtype), carry=carry)


def test_another_cells_params_are_refused_naming_both(key):
    with pytest.raises(ValueError, match=r"params of type gated_rnn\.lstm\.Params do not "
                                         r"belong to the cell gated_rnn\.gru\.cell\("
                                         r"'reset_after'\), which takes gated_rnn\.gru\.Params"):
        scan.run(gru.cell(), lstm.init_params(key, I, H), jnp.ones((2, 3, I)))
