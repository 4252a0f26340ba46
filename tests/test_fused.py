"""Pins the fast paths of `scan.run` (`gated_rnn.fused`, and remat on the plain scan) against a
Python loop over `cell.step`: values and gradients (params, inputs, initial carry), float32 to a
relative error of 1e-5, with lengths, reverse, chunk tails, projection and remat; float64 to
1e-10. Also: bfloat16 matmuls stay close, vmap over params, layer options, memory of remat,
chunk-size choice, and the errors for unsupported combinations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from gated_rnn import fused, gru, initializers, layers, lstm, rnn, scan
from tests import helpers

I, H = 3, 4


def _cell_and_params(name, key, dtype=jnp.float32):
    u = initializers.uniform(0.6)
    kw = dict(dtype=dtype, kernel_init=u, recurrent_init=u, bias_init=u)
    if name == "lstm":
        return lstm, lstm.init_params(key, I, H, **kw)
    if name == "lstm_proj":
        return lstm, lstm.init_params(key, I, H, proj_size=2, proj_init=u, **kw)
    if name == "rnn":
        return rnn, rnn.init_params(key, I, H, **kw)
    return gru.cell(name.split("_", 1)[1] if "_" in name else "reset_after"), \
        gru.init_params(key, I, H, candidate_bias_init=u, **kw)


def _loss(outputs):
    """A loss that weighs every output and every final-carry entry differently."""
    carry, ys = outputs
    w = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.cos(a)) for a in jax.tree_util.tree_leaves(carry))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _check_against_loop(key, name, *, steps, lengths, reverse, dtype, tol, **options):
    cell, params = _cell_and_params(name, key, dtype)
    kx, kc = jax.random.split(jax.random.fold_in(key, 7))
    xs = jax.random.normal(kx, (3, steps, I), dtype)
    carry0 = jax.tree_util.tree_map(lambda a: 0.5 * jax.random.normal(kc, a.shape, dtype),
                                    cell.zero_carry(params, (3,)))

    def fast(p, x, c):
        return scan.run(cell, p, x, carry=c, seq_lengths=lengths, reverse=reverse, **options)

    def slow(p, x, c):
        return helpers.step_loop(cell, p, x, c, lengths, reverse)

    def value_and_grads(f):
        loss = lambda *a: (_loss(out := f(*a)), out)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            params, xs, carry0)

    (_, out_fast), g_fast = value_and_grads(fast)
    (_, out_slow), g_slow = value_and_grads(slow)
    for a, b in zip(jax.tree_util.tree_leaves(out_fast), jax.tree_util.tree_leaves(out_slow)):
        assert _rel(a, b) <= tol, f"values: rel err {_rel(a, b):.2e}"
    leaves_fast, leaves_slow = jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_slow)
    assert len(leaves_fast) == len(leaves_slow)
    for i, (a, b) in enumerate(zip(leaves_fast, leaves_slow)):
        assert a.shape == b.shape
        assert _rel(a, b) <= tol, f"gradient leaf {i}: rel err {_rel(a, b):.2e}"


CASES = [  # (cell, steps, lengths, reverse, options)
    ("lstm", 7, None, False, dict()),                                      # the defaults
    ("lstm_proj", 9, [9, 0, 4], False, dict(impl="fused", remat=True)),
    ("gru", 8, None, True, dict(impl="fused", chunk_size=3, remat=True)),   # tail of 2 steps
    ("gru", 8, [8, 1, 5], False, dict(impl="fused", chunk_size=3)),
    ("rnn", 6, [6, 4, 2], True, dict(impl="fused", chunk_size=4, remat=True)),
    ("gru_reset_before", 7, [7, 2, 5], True, dict(impl="scan", remat=True, chunk_size=3)),
]


@pytest.mark.parametrize("name,steps,lengths,reverse,options", CASES)
def test_fast_paths_match_step_loop_float32(key, name, steps, lengths, reverse, options):
    _check_against_loop(key, name, steps=steps, lengths=lengths, reverse=reverse,
                        dtype=jnp.float32, tol=1e-5, **options)


def test_fused_matches_step_loop_float64(key):
    with enable_x64():
        _check_against_loop(key, "lstm", steps=6, lengths=[6, 2, 4], reverse=True,
                            dtype=jnp.float64, tol=1e-10, impl="fused", chunk_size=4,
                            remat=True)


def test_fused_forward_equals_the_scan_forward(key):
    """The same float32 ops, but per-gate matmuls: equal to the plain scan up to rounding."""
    cell, params = _cell_and_params("lstm", key)
    xs = jax.random.normal(key, (4, 13, I))
    a = scan.run(cell, params, xs, impl="fused", chunk_size=5)
    b = scan.run(cell, params, xs, impl="scan")
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_bfloat16_matmuls_stay_close(key):
    """bfloat16 operands (8 bits of mantissa) with float32 state: ~1e-2 of the float32 result."""
    cell, params = _cell_and_params("lstm", key)
    xs = jax.random.normal(key, (4, 20, I))
    loss = lambda p, **o: _loss(scan.run(cell, p, xs, impl="fused", **o))  # noqa: E731
    exact, approx = (jax.value_and_grad(functools.partial(loss, **o))(params)
                     for o in ({}, {"matmul_dtype": jnp.bfloat16}))
    assert _rel(approx[0], exact[0]) < 2e-2
    for a, b in zip(jax.tree_util.tree_leaves(approx[1]), jax.tree_util.tree_leaves(exact[1])):
        assert 1e-5 < _rel(a, b) < 5e-2  # bfloat16 really is used, and stays close
        assert a.dtype == jnp.float32


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_vmap_over_params_equals_separate_runs(key, name):
    """vmap keeps its axis first through the step loops (`fused._scan`): still the same numbers."""
    cell, p0 = _cell_and_params(name, key)
    _, p1 = _cell_and_params(name, jax.random.fold_in(key, 1))
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), p0, p1)
    xs = jax.random.normal(key, (2, 6, I))
    grad = jax.grad(lambda p: _loss(scan.run(cell, p, xs, impl="fused", chunk_size=4)))
    g, g0 = jax.jit(jax.vmap(grad))(stacked), jax.jit(grad)(p0)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(jax.jit(grad)(p1))):
        np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6)


def test_layers_plans_give_the_same_numbers(key):
    spec = layers.Spec(cell="lstm", input_size=I, hidden_size=H, bidirectional=True)
    params = layers.init(key, spec)
    xs = jax.random.normal(key, (2, 9, I))
    lengths = jnp.array([9, 4])

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def value_and_grad(s, plan, p):
        return jax.value_and_grad(
            lambda p: jnp.sum(layers.apply(s, p, xs, seq_lengths=lengths, plan=plan)[0] ** 2))(p)

    want = value_and_grad(spec, layers.Plan(impl="scan"), params)
    got = value_and_grad(spec, layers.Plan(impl="fused", remat=True, chunk_size=2), params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert _rel(a, b) < 1e-5
    assert layers.Plan().impl is scan.Impl.AUTO
    assert scan.resolve_impl(spec.cell_fns, layers.Plan().impl) is scan.Impl.FUSED


def test_remat_cuts_the_training_steps_memory(key):
    """XLA's own accounting of the compiled training step: remat keeps O(sqrt T) activations."""
    cell, params = _cell_and_params("lstm", key)
    xs = jnp.zeros((8, 400, I))

    def temp_bytes(**options):
        grad = jax.jit(jax.grad(lambda p: jnp.sum(scan.run(cell, p, xs, **options)[1])))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    full, remat = temp_bytes(impl="fused"), temp_bytes(impl="fused", remat=True)
    assert remat < 0.4 * full, (remat, full)


def test_default_chunk_size_prefers_divisors():
    assert fused.default_chunk_size(1000, 32, remat=True) == 25      # sqrt(1000) ~ 31.6
    assert fused.default_chunk_size(10_000, 32, remat=True) == 100
    assert fused.default_chunk_size(997, 32, remat=True) == 31       # prime: a tail instead
    assert fused.default_chunk_size(100, 32, remat=False) == 100     # 3200 rows: one chunk
    assert fused.default_chunk_size(200, 32, remat=False) == 25      # ~1024 rows a chunk
    assert fused.default_chunk_size(1000, 256, remat=False) == 4
    assert fused.default_chunk_size(5, 1, remat=False) == 5


def test_unsupported_combinations_raise(key):
    cell, params = _cell_and_params("gru_reset_before", key)
    xs = jnp.zeros((2, 3, I))
    assert not fused.supports(cell) and fused.supports(lstm) and fused.supports(gru.cell())
    with pytest.raises(ValueError, match="impl='fused'.*reset_after"):
        scan.run(cell, params, xs, impl="fused")
    with pytest.raises(ValueError, match="impl: unknown value 'fast'"):
        scan.run(lstm, _cell_and_params("lstm", key)[1], xs, impl="fast")
    with pytest.raises(ValueError, match="matmul_dtype.*impl='fused'"):
        scan.run(cell, params, xs, matmul_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="chunk_size.*0"):
        scan.run(gru.cell(), params, xs, chunk_size=0)
    before = layers.Spec(cell="gru", input_size=I, hidden_size=H, gru_variant="reset_before")
    with pytest.raises(ValueError, match="impl='fused'.*reset_after"):
        layers.check_plan(before, layers.Plan(impl="fused"))
    with pytest.raises(ValueError, match="impl='fused'.*reset_after"):
        layers.apply(before, layers.init(key, before), xs, plan=layers.Plan(impl="fused"))
    with pytest.raises(ValueError, match="matmul_dtype='bfloat16' needs the fused"):
        layers.Plan(impl="scan", matmul_dtype="bfloat16")
    with pytest.raises(ValueError, match="matmul_dtype='bfloat16' needs the fused"):
        layers.check_plan(before, layers.Plan(matmul_dtype="bfloat16"))  # AUTO: scan here
    with pytest.raises(ValueError, match="remat: expected a bool"):
        layers.Plan(remat="yes")
    with pytest.raises(ValueError, match="unroll: expected an integer >= 1, got 0"):
        layers.Plan(unroll=0)


def test_cudnn_packing_and_directions_on_the_reference_kernel(key, monkeypatch):
    """impl='cudnn' with cuDNN's CPU reference (`jax.experimental.rnn.lstm_ref`) in place of the
    GPU kernel: the weight packing, lengths and reverse give scan.run's numbers."""
    from gated_rnn import cudnn
    monkeypatch.setattr(cudnn, "run", functools.partial(cudnn.run, reference=True))
    monkeypatch.setattr(cudnn, "check", functools.partial(cudnn.check, reference=True))
    _, params = _cell_and_params("lstm", key)
    xs = jax.random.normal(key, (3, 6, I))
    for lengths, reverse in ((None, True), (jnp.array([6, 1, 4]), True), (None, False)):
        got = scan.run(lstm, params, xs, seq_lengths=lengths, reverse=reverse, impl="cudnn")
        want = scan.run(lstm, params, xs, seq_lengths=lengths, reverse=reverse, impl="scan")
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert _rel(a, b) < 1e-5


def test_cudnn_refuses_what_it_cannot_run(key):
    _, params = _cell_and_params("lstm", key)
    xs = jnp.zeros((2, 3, I))
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="on a GPU.*backend is 'cpu'"):
            scan.run(lstm, params, xs, impl="cudnn")
    cell, gru_params = _cell_and_params("gru", key)
    with pytest.raises(ValueError, match="plain float32 LSTM"):
        scan.run(cell, gru_params, xs, impl="cudnn")
    _, proj = _cell_and_params("lstm_proj", key)
    with pytest.raises(ValueError, match="with a projection"):
        scan.run(lstm, proj, xs, impl="cudnn")
