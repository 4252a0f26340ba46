"""Pins the cells added for issue 13 (irnn, the ReLU rnn, urlstm, mingru, minlstm).

Each step against its float64 NumPy transcription (tests/numpy_ref.py, from the papers'
equations), `check_grads`, `scan.run` with lengths and reverse against a Python loop over the
step, the min-cells' linear-scan paths (the multiply-add loop and the associative scan) against
their sequential step (values and gradients), 2-layer bidirectional stacks against NumPy, dropout placement, the inits
(identity U, UGI, chrono on the keep gate), the Flax modules, and nn.RNN(nonlinearity="relu")
loading exactly.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import enable_x64
from jax.test_util import check_grads

from gated_rnn import interop, irnn, layers, lstm, mingru, minlstm, modules, rnn, scan, trace
from gated_rnn import urlstm
from tests import helpers
from tests import numpy_ref as ref

I, H, B, T = 3, 4, 3, 6
LENGTHS = [6, 2, 0]
RELU = rnn.cell("relu")
SLOW = pytest.mark.slow  # kept out of the default run (cost); each has a cheap default sibling
CELLS = {"relu_rnn": RELU, "irnn": irnn, "urlstm": urlstm, "mingru": mingru, "minlstm": minlstm}


def _np(params):
    return {k: np.asarray(v) for k, v in params._asdict().items()}


def _random(shape, seed, dtype=np.float32, low=-1.0, high=1.0):
    """A uniform array from NumPy (no JAX op to compile: the tests' cost is compiles)."""
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape).astype(dtype))


def _random_params(cell, seed=0, dtype=np.float32, scale=0.7):
    """Params with every entry random (biases and b_f too), so no term hides behind a zero."""
    shapes = jax.eval_shape(lambda: cell.init_params(jax.random.key(0), I, H))
    return type(shapes)(**{name: None if a is None else _random(a.shape, seed + n, dtype,
                                                                -scale, scale)
                           for n, (name, a) in enumerate(shapes._asdict().items())})


def _random_carry(cell, params, batch, seed, dtype=np.float32):
    shapes = jax.eval_shape(lambda: cell.zero_carry(params, (batch,)))
    return type(shapes)(*(_random(a.shape, seed + n, dtype, 0.1, 1.0)
                          for n, a in enumerate(shapes)))


def _ref_step(name, p):
    """The NumPy step of cell `name` over a state tuple (h,) or (h, c)."""
    return {"relu_rnn": lambda s, x: (ref.relu_rnn_step(p, s[0], x),),
            "irnn": lambda s, x: (ref.relu_rnn_step(p, s[0], x),),
            "urlstm": lambda s, x: ref.urlstm_step(p, s[0], s[1], x),
            "mingru": lambda s, x: (ref.mingru_step(p, s[0], x),),
            "minlstm": lambda s, x: (ref.minlstm_step(p, s[0], x),)}[name]


@pytest.mark.parametrize("name", list(CELLS))
def test_step_matches_the_numpy_transcription_in_float64(name, key):
    cell = CELLS[name]
    with enable_x64():
        p = _random_params(cell, 0, np.float64)
        carry = _random_carry(cell, p, B, 10, np.float64)
        x = _random((B, I), 20, np.float64, -2, 2)
        got, y = jax.jit(cell.step)(p, carry, x)
        want = _ref_step(name, _np(p))(tuple(np.asarray(a) for a in carry), np.asarray(x))
        for a, w in zip(got, want):
            np.testing.assert_allclose(a, w, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(y, got.h)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in ("irnn", "minlstm") else [SLOW])
                                  for n in CELLS])
def test_check_grads_of_the_step(name, key):
    cell = CELLS[name]
    with enable_x64():
        p = _random_params(cell, 0, np.float64)
        carry = _random_carry(cell, p, 2, 10, np.float64)
        x = _random((2, I), 20, np.float64, -2, 2)
        check_grads(jax.jit(cell.step), (p, carry, x), order=1, modes=("fwd", "rev"))


def _loss(cell, impl, p, xs, carry, lengths, reverse):
    c, ys = scan.run(cell, p, xs, carry=carry, impl=impl, reverse=reverse,
                     seq_lengths=None if lengths is None else jnp.asarray(lengths))
    return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.sin(a)) for a in c), (c, ys)


# One case per cell in the default run (lengths and reverse together); the rest with -m slow.
RUN_CASES = [pytest.param(name, LENGTHS, True, id=f"{name}-lengths-reverse",
                          marks=[] if name == "urlstm" else [SLOW])
             for name in CELLS] + [
    pytest.param(name, lengths, reverse, id=f"{name}-{case}", marks=SLOW)
    for name in CELLS for case, lengths, reverse in (("reverse", None, True),
                                                      ("lengths", LENGTHS, False))]


@pytest.mark.parametrize("name, lengths, reverse", RUN_CASES)
def test_scan_run_equals_a_python_loop_with_lengths_and_reverse(name, lengths, reverse, key):
    """Every implementation `scan.run` offers the cell (fused or parallel, and scan), values and
    gradients (of params, inputs and the initial carry) against a loop over `cell.step`."""
    cell = CELLS[name]
    p = _random_params(cell)
    xs = _random((B, T, I), 20, low=-2, high=2)
    carry = _random_carry(cell, p, B, 10)

    def loop_loss(p, xs, carry):
        c, ys = helpers.step_loop(cell, p, xs, carry, lengths, reverse)
        return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.sin(a)) for a in c), (c, ys)

    (_, want), want_grads = jax.jit(jax.value_and_grad(loop_loss, (0, 1, 2), has_aux=True))(
        p, xs, carry)
    impls = {scan.resolve_impl(cell, "auto"), scan.Impl.SCAN}
    impls |= {scan.Impl.PARALLEL, scan.Impl.FUSED} if name in ("mingru", "minlstm") else set()
    for impl in impls:
        (_, got), grads = jax.jit(jax.value_and_grad(
            lambda p, xs, c: _loss(cell, impl, p, xs, c, lengths, reverse), (0, 1, 2),
            has_aux=True))(p, xs, carry)
        helpers.assert_trees_close(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {impl}")
        helpers.assert_trees_close(grads, want_grads, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name} {impl} grads")


@pytest.mark.parametrize("name", ["mingru", pytest.param("minlstm", marks=SLOW)])
def test_linear_scan_paths_equal_the_sequential_step_in_float32(name, key):
    """The multiply-add loop (fused) and the associative scan (parallel) against `jax.lax.scan`
    over the sequential step, from the zero carry, with lengths and reverse, at T = 12 with
    weights ~ U(-1.5, 1.5): values and gradients, rel <= 1e-5 (atol 1e-6 for entries near
    zero)."""
    cell = CELLS[name]
    want_auto = scan.Impl.FUSED if jax.default_backend() == "cpu" else scan.Impl.PARALLEL
    assert scan.resolve_impl(cell, "auto") is want_auto
    p = _random_params(cell, scale=1.5)
    xs = _random((B, 12, I), 20, low=-2, high=2)

    def loss(impl, p, xs):
        c, ys = scan.run(cell, p, xs, impl=impl, seq_lengths=jnp.array([12, 7, 1]), reverse=True)
        return jnp.sum(ys ** 2) + jnp.sum(c.h), ys

    def value_and_grad(impl):
        return jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a), (0, 1), has_aux=True))(p, xs)

    (_, seq), g_seq = value_and_grad("scan")
    assert float(jnp.max(jnp.abs(seq))) > 0.5  # a state that moved, not zeros
    for impl in ("fused", "parallel"):
        (_, got), g_got = value_and_grad(impl)
        helpers.assert_trees_close(got, seq, rtol=1e-5, atol=1e-6, err_msg=impl)
        helpers.assert_trees_close(g_got, g_seq, rtol=1e-5, atol=1e-6, err_msg=impl)


def test_linear_scan_paths_take_forward_mode_and_refuse_what_they_cannot_do():
    """Both linear-scan paths are plain JAX: `jax.jvp` through them equals the step loop's. The
    parallel path needs a linear cell; matmul_dtype needs a recurrent matmul."""
    p = _random_params(mingru)
    xs = _random((B, 6, I), 21)
    tangent = _random((B, 6, I), 22)
    jvps = {impl: jax.jvp(lambda x: scan.run(mingru, p, x, impl=impl)[1], (xs,), (tangent,))
            for impl in ("scan", "fused", "parallel")}
    for impl in ("fused", "parallel"):
        helpers.assert_trees_close(jvps[impl], jvps["scan"], rtol=1e-5, atol=1e-6, err_msg=impl)
    with pytest.raises(ValueError, match="impl='parallel' needs a cell linear in its state"):
        scan.resolve_impl(urlstm, "parallel")
    with pytest.raises(ValueError, match="matmul_dtype='bfloat16' needs impl='fused' on a cell "
                                         "with a recurrent matmul"):
        scan.run(mingru, p, xs, impl="fused", matmul_dtype=jnp.bfloat16)


def _numpy_stack(name, spec, params, xs, lengths):
    """A stack, one sequence and one direction at a time, in NumPy."""
    x = np.asarray(xs)
    for layer in params:
        outs = []
        for d, p in enumerate(layer):
            step = _ref_step(name, _np(p))
            init = tuple(np.zeros(H) for _ in spec.cell_fns.Carry._fields)
            outs.append(np.stack([ref.run(step, init, x[b], lengths[b], reverse=d == 1)[1]
                                  for b in range(x.shape[0])]))
        x = np.concatenate(outs, axis=-1)
    return x


@SLOW
@pytest.mark.parametrize("name", ["irnn", "urlstm", "mingru", "minlstm"])
def test_bidirectional_two_layer_stack_matches_numpy(name, key):
    with enable_x64():
        spec = layers.Spec(cell=name, input_size=I, hidden_size=H, num_layers=2,
                           bidirectional=True, dtype="float64")
        params = jax.jit(layers.init, static_argnums=1)(key, spec)
        xs = _random((B, T, I), 20, np.float64, -2, 2)
        ys, finals = jax.jit(lambda p, x: layers.apply(spec, p, x, seq_lengths=jnp.array(LENGTHS))
                             )(params, xs)
        assert ys.shape == (B, T, 2 * H) and len(finals) == 2 and len(finals[1]) == 2
        np.testing.assert_allclose(ys, _numpy_stack(name, spec, params, xs, LENGTHS),
                                   rtol=1e-10, atol=1e-12)


@SLOW
@pytest.mark.parametrize("name", ["urlstm", "mingru"])
def test_dropout_acts_between_layers_only(name, key):
    spec = layers.Spec(cell=name, input_size=I, hidden_size=H, num_layers=2, dropout=0.5)
    params = layers.init(key, spec)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    k = jax.random.key(7)
    got, _ = layers.apply(spec, params, xs, dropout_key=k)
    _, h0 = scan.run(spec.cell_fns, params[0][0], xs)
    _, want = scan.run(spec.cell_fns, params[1][0],
                       layers.dropout(jax.random.fold_in(k, 0), 0.5, h0))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    plain, _ = layers.apply(spec, params, xs)
    assert not np.allclose(got, plain)


def test_irnn_starts_at_identity_and_urlstm_at_ugi(key):
    """The cheap default sibling of the next test."""
    np.testing.assert_array_equal(irnn.identity(None, (4, 4)), np.eye(4))
    f = 1 / (1 + np.exp(-np.asarray(urlstm.ugi(key, (64,)), np.float64)))
    assert 1 / 64 <= f.min() < 0.1 and 0.9 < f.max() <= 1 - 1 / 64


@SLOW
def test_inits_are_the_papers(key):
    """irnn: U = identity, b = 0; urlstm: sigma(b_f) spans U[1/H, 1 - 1/H], b = 0 (also under
    chrono: UGI is its own); chrono and forget bias reach the min-cells' keep gates; TORCH
    replaces irnn's identity."""
    init = jax.jit(layers.init, static_argnums=1)
    p = init(key, layers.Spec("irnn", I, 8))[0][0]
    np.testing.assert_array_equal(p.w_h, np.eye(8))
    assert not np.any(p.b)
    assert not np.allclose(init(key, layers.Spec("irnn", I, 8, init="torch"))[0][0].w_h,
                           np.eye(8))
    q = init(key, layers.Spec("urlstm", I, 256, init="chrono", chrono_max_len=10))[0][0]
    f = jax.nn.sigmoid(np.asarray(q.b_f, np.float64))
    assert 1 / 256 <= float(f.min()) < 0.03 and 0.97 < float(f.max()) <= 1 - 1 / 256
    assert not np.any(q.b)
    # The keep gate a at x = 0: chrono a = sigma(log U[1, T_max - 1]), so 1 / (1 - a) spans
    # [2, T_max]; forget bias 2 gives a = sigma(2) (minLSTM: normalized by f + i, i = 1/2).
    for name in ("mingru", "minlstm"):
        cell = layers.Spec(name, I, 8).cell_fns

        def keep(spec):
            p = init(key, spec)[0][0]
            return cell.internals(p, None, np.asarray(p.b, np.float64)[None])["a"]

        tau = 1 / (1 - keep(layers.Spec(name, I, 256, init="chrono", chrono_max_len=100)))
        assert 1.99 < float(tau.min()) < 5 and 80 < float(tau.max()) <= 100.01, name
        a = keep(layers.Spec(name, I, 8, init="forget_bias", forget_bias=2.0))
        s2 = 1 / (1 + np.exp(-2.0))
        np.testing.assert_allclose(a, s2 if name == "mingru" else s2 / (s2 + 0.5), rtol=1e-6)


def test_nonlinearity_is_a_spec_field_of_the_rnn_only():
    assert layers.Spec("rnn", I, H, nonlinearity="relu").cell_fns.TORCH_NAME == "RNN_RELU"
    assert layers.Spec("rnn", I, H).cell_fns.TORCH_NAME == "RNN_TANH"
    with pytest.raises(ValueError, match="nonlinearity='relu': only cell='rnn' takes one"):
        layers.Spec("lstm", I, H, nonlinearity="relu")
    with pytest.raises(ValueError, match="nonlinearity: unknown value 'gelu'"):
        layers.Spec("rnn", I, H, nonlinearity="gelu")
    with pytest.raises(ValueError, match="cell='urlstm' has no PyTorch counterpart"):
        interop.expected_keys(layers.Spec("urlstm", I, H))


def test_relu_nn_rnn_loads_exactly_and_a_tanh_spec_would_differ():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.RNN(I, H, num_layers=2, nonlinearity="relu", batch_first=True,
                          bidirectional=True)
    xs = np.random.default_rng(0).normal(size=(B, T, I)).astype(np.float32)
    want = module(torch.from_numpy(xs))[0].detach().numpy()
    spec, params = interop.load_torch(module)
    assert spec.nonlinearity is rnn.Nonlinearity.RELU
    got, _ = layers.apply(spec, params, xs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The same weights under irnn (the same cell, other init) and under the tanh cell.
    same, _ = layers.apply(layers.Spec("irnn", I, H, num_layers=2, bidirectional=True), params,
                           xs)
    np.testing.assert_allclose(same, want, rtol=1e-5, atol=1e-6)
    sd = module.state_dict()
    tanh = interop.from_torch(sd, layers.Spec("rnn", I, H, num_layers=2, bidirectional=True))
    wrong, _ = layers.apply(layers.Spec("rnn", I, H, num_layers=2, bidirectional=True), tanh, xs)
    assert np.max(np.abs(np.asarray(wrong) - want)) > 0.05
    back = interop.to_torch(params, spec, tensor=torch.from_numpy)
    module.load_state_dict(back)
    np.testing.assert_allclose(module(torch.from_numpy(xs))[0].detach().numpy(), want,
                               rtol=1e-6, atol=1e-6)


LINEN = {"irnn": (modules.IRNNCell, modules.IRNN, modules.NNXIRNN),
         "urlstm": (modules.URLSTMCell, modules.URLSTM, modules.NNXURLSTM),
         "mingru": (modules.MinGRUCell, modules.MinGRU, modules.NNXMinGRU),
         "minlstm": (modules.MinLSTMCell, modules.MinLSTM, modules.NNXMinLSTM)}


def test_nnx_min_gru_stack_equals_a_loop_over_its_layers():
    """The cheap default sibling of the two slow tests above and below: an NNX stack (2 layers,
    bidirectional, lengths; the sequential path on CPU) against `scan.run` per layer and
    direction on the parallel path."""
    xs = _random((B, T, I), 20, low=-2, high=2)
    model = modules.NNXMinGRU(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    assert model.spec == layers.Spec("mingru", I, H, num_layers=2, bidirectional=True)
    lengths = jnp.array(LENGTHS)
    x = xs
    for layer in model.params:
        x = jnp.concatenate([scan.run(mingru, p, x, seq_lengths=lengths, reverse=d == 1,
                                      impl="parallel")[1] for d, p in enumerate(layer)], axis=-1)
    helpers.assert_trees_close(model(xs, seq_lengths=lengths)[0], x, rtol=1e-5, atol=1e-6)


@SLOW
@pytest.mark.parametrize("name", list(LINEN))
def test_flax_modules_equal_the_functional_path(name, key):
    """The linen cell in nn.RNN equals scan.run (its carry in Flax's structure: (c, h) or the
    bare h); the linen and NNX stacks equal layers.apply (2 layers, bidirectional, lengths)
    with the params they drew."""
    cell_cls, linen_cls, nnx_cls = LINEN[name]
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array(LENGTHS)
    cell = cell_cls(hidden_size=H)
    model = nn.RNN(cell, return_carry=True)
    variables = model.init(key, xs)
    params = modules.from_flax(variables["params"]["cell"], cell.spec(I))
    carry, ys = scan.run(cell.spec(I).cell_fns, params, xs)
    (flax_carry, flax_ys) = model.apply(variables, xs)
    # Flax's structures at the cell boundary: (c, h) for an LSTM-like carry, else the bare h.
    want_carry = (carry.c, carry.h) if hasattr(carry, "c") else carry.h
    helpers.assert_trees_close((flax_carry, flax_ys), (want_carry, ys), rtol=1e-5, atol=1e-6,
                               err_msg=name)

    stack = linen_cls(hidden_size=H, num_layers=2, bidirectional=True)
    variables = stack.init(key, xs)
    spec = stack.spec(I)
    want = layers.apply(spec, modules.from_flax(variables["params"], spec), xs,
                        seq_lengths=lengths)
    helpers.assert_trees_close(stack.apply(variables, xs, seq_lengths=lengths), want,
                               err_msg=name)

    nnx_stack = nnx_cls(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    assert nnx_stack.spec == spec
    helpers.assert_trees_close(nnx_stack(xs, seq_lengths=lengths),
                               layers.apply(spec, nnx_stack.params, xs, seq_lengths=lengths),
                               err_msg=name)


def test_relu_option_reaches_the_flax_rnn_modules(key):
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    cell = modules.RNNCell(hidden_size=H, nonlinearity="relu")
    assert cell.spec(I).nonlinearity is rnn.Nonlinearity.RELU
    assert modules.RNN(hidden_size=H, nonlinearity="relu").spec(I) == layers.Spec(
        "rnn", I, H, nonlinearity="relu")
    nnx_cell = modules.NNXRNNCell(I, H, nonlinearity="relu", rngs=nnx.Rngs(0))
    _, y = nnx_cell(nnx_cell.initialize_carry((B, I)), xs[:, 0])
    assert float(jnp.min(y)) == 0.0  # relu: some units are exactly zero


def test_trace_shows_each_steps_gates_and_carry():
    """LSTM with lengths and reverse: the traced h and c are scan.run's outputs and carries,
    and the traced f at step t is sigma of the forget block at the carry of step t - 1."""
    p = _random_params(lstm)
    xs = _random((B, T, I), 20, low=-2, high=2)
    lengths = jnp.array(LENGTHS)
    carry, seen = trace.run(lstm, p, xs, seq_lengths=lengths, reverse=True)
    want_carry, ys = scan.run(lstm, p, xs, seq_lengths=lengths, reverse=True)
    assert set(seen) == {"i", "f", "g", "o", "keep", "h", "c"}
    helpers.assert_trees_close((carry, seen["h"]), (want_carry, ys), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(seen["keep"], seen["f"])
    # Reverse: sequence 0 (length 6) reads x[5] first, then x[4] with the carry after x[5].
    z = xs[0, 4] @ p.w_x + p.b + seen["h"][0, 5] @ p.w_h
    np.testing.assert_allclose(seen["f"][0, 4], jax.nn.sigmoid(z[H:2 * H]), rtol=1e-5)
    assert not np.any(seen["f"][1, 2:]) and not np.any(seen["f"][2])  # past each length
    with pytest.raises(ValueError, match="has no internals"):
        trace.run(rnn, _random_params(rnn), xs)


@pytest.mark.parametrize("name", list(CELLS))
def test_new_cells_carry_the_whole_protocol(name):
    from tests.test_protocol import PROTOCOL
    cell = CELLS[name]
    for attr in PROTOCOL:
        assert hasattr(cell, attr), attr
    assert sum(cell.BLOCKS) == cell.NUM_GATES
    assert set(cell.INITIALIZERS) <= set(cell.init_params.__code__.co_varnames)
    assert (getattr(cell, "coefficients", None) is None) == (name not in ("mingru",
                                                                               "minlstm"))
