"""Pins `layers` stacks: a 2-layer bidirectional stack against a float64 NumPy loop, final-carry
layout, variable lengths through both directions, dropout placement, the Init schemes and the
Spec's validation."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64
from jax.test_util import check_grads

from gated_rnn import gru, layers, lstm, scan
from tests import numpy_ref as ref


def _np(params):
    return {k: (None if v is None else np.asarray(v)) for k, v in params._asdict().items()}


def _numpy_stack(spec, params, xs, lengths):
    """Reference for a stack, one sequence and one direction at a time."""
    xs = np.asarray(xs)
    B, T, _ = xs.shape
    finals = []
    x = xs
    for layer in params:
        outs, layer_finals = [], []
        for d, p in enumerate(layer):
            p = _np(p)
            H = spec.hidden_size
            if spec.cell is layers.CellType.LSTM:
                step = lambda s, x, p=p: ref.lstm_step(p, s[0], s[1], x)  # noqa: E731
                init = (np.zeros(H), np.zeros(H))
            else:
                v = spec.gru_variant.value
                step = lambda s, x, p=p, v=v: (ref.gru_step(p, s[0], x, v),)  # noqa: E731
                init = (np.zeros(H),)
            ys, fs = [], []
            for b in range(B):
                state, y = ref.run(step, init, x[b], None if lengths is None else lengths[b],
                                   reverse=d == 1)
                ys.append(y)
                fs.append(state)
            outs.append(np.stack(ys))
            layer_finals.append(fs)
        x = np.concatenate(outs, axis=-1)
        finals.append(layer_finals)
    return x, finals


@pytest.mark.parametrize("cell,variant", [("lstm", "reset_after"), ("gru", "reset_after"),
                                          ("gru", "reset_before")])
def test_bidirectional_stack_matches_numpy(key, cell, variant):
    with enable_x64():
        spec = layers.Spec(cell=cell, input_size=3, hidden_size=4, num_layers=2,
                           bidirectional=True, gru_variant=variant, init="torch",
                           dtype=jnp.float64)
        params = layers.init(key, spec)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (3, 5, 3), jnp.float64)
        lengths = np.array([5, 2, 4])
        ys, finals = jax.jit(layers.apply, static_argnums=0)(spec, params, xs,
                                                             seq_lengths=lengths)
        ys_ref, finals_ref = _numpy_stack(spec, params, xs, lengths)
        assert ys.shape == (3, 5, 8)
        np.testing.assert_allclose(ys, ys_ref, rtol=1e-12, atol=1e-14)
        for l in range(2):
            for d in range(2):
                np.testing.assert_allclose(finals[l][d].h,
                                           np.stack([s[0] for s in finals_ref[l][d]]),
                                           rtol=1e-12, atol=1e-14)
                if cell == "lstm":
                    np.testing.assert_allclose(finals[l][d].c,
                                               np.stack([s[1] for s in finals_ref[l][d]]),
                                               rtol=1e-12, atol=1e-14)


def test_layer_input_sizes(key):
    spec = layers.Spec("lstm", input_size=3, hidden_size=4, num_layers=3, bidirectional=True)
    params = layers.init(key, spec)
    assert [p[0].w_x.shape for p in params] == [(3, 16), (8, 16), (8, 16)]
    assert len(params[0]) == 2 and spec.output_size == layers.output_size(spec) == 8
    proj = layers.Spec("lstm", input_size=3, hidden_size=4, proj_size=2, bidirectional=True)
    pp = layers.init(key, proj)
    ys, finals = layers.apply(proj, pp, jnp.ones((2, 3, 3)))
    assert ys.shape == (2, 3, 4) and finals[0][1].h.shape == (2, 2) and finals[0][1].c.shape == (2, 4)


def test_initial_carry_round_trips(key):
    """Running T steps, then T more from the returned carries, equals running 2T at once."""
    spec = layers.Spec("gru", input_size=3, hidden_size=4, num_layers=2)
    params = layers.init(key, spec)
    xs = jax.random.normal(key, (2, 8, 3))
    ys_all, finals_all = layers.apply(spec, params, xs)
    ys_a, finals_a = layers.apply(spec, params, xs[:, :4])
    ys_b, finals_b = layers.apply(spec, params, xs[:, 4:], initial_carry=finals_a)
    np.testing.assert_allclose(jnp.concatenate([ys_a, ys_b], 1), ys_all, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(finals_b[1][0].h, finals_all[1][0].h, rtol=1e-5, atol=1e-6)


def test_dropout_between_layers_only_with_a_key(key):
    xs = jax.random.normal(key, (4, 6, 3))
    spec = layers.Spec("lstm", input_size=3, hidden_size=8, num_layers=2, dropout=0.5)
    no_drop = layers.Spec("lstm", input_size=3, hidden_size=8, num_layers=2)
    params = layers.init(key, spec)
    ref_ys, _ = layers.apply(no_drop, params, xs)
    eval_ys, _ = layers.apply(spec, params, xs)
    np.testing.assert_array_equal(eval_ys, ref_ys)
    train_ys, _ = layers.apply(spec, params, xs, dropout_key=jax.random.key(3))
    assert np.max(np.abs(train_ys - ref_ys)) > 1e-3
    # Equals feeding layer 2 the dropped-out layer-1 output by hand (mask from the same key).
    ys1, _ = layers.apply(layers.Spec("lstm", 3, 8), params[:1], xs)
    dropped = layers.dropout(jax.random.fold_in(jax.random.key(3), 0), 0.5, ys1)
    ys2, _ = layers.apply(layers.Spec("lstm", 8, 8), params[1:], dropped)
    np.testing.assert_allclose(train_ys, ys2, rtol=1e-6)
    # A single layer has no "between": dropout never touches the last layer's output.
    with pytest.warns(UserWarning, match="dropout=0.5 with num_layers=1 does nothing"):
        one = layers.Spec("lstm", input_size=3, hidden_size=8, dropout=0.5)
    p1 = layers.init(key, one)
    np.testing.assert_array_equal(layers.apply(one, p1, xs, dropout_key=key)[0],
                                  layers.apply(one, p1, xs)[0])


def test_dropout_statistics(key):
    x = jnp.ones((200, 500))
    y = layers.dropout(key, 0.3, x)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)


def test_init_schemes(key):
    def bias(init, cell="lstm", **kw):
        spec = layers.Spec(cell, input_size=3, hidden_size=64, init=init, **kw)
        return np.asarray(layers.init(key, spec)[0][0].b)

    b = bias("forget_bias", forget_bias=1.5)
    np.testing.assert_array_equal(b[64:128], 1.5)
    assert not np.any(b[:64]) and not np.any(b[128:])
    assert not np.any(bias("default"))
    b = bias("chrono", chrono_max_len=100)
    b_f = b[64:128]
    assert np.all(b_f >= 0) and np.all(b_f <= np.log(99)) and b_f.std() > 0.3
    np.testing.assert_array_equal(b[:64], -b_f)
    assert not np.any(b[128:])
    # GRU: the update gate z biased towards keeping the state, in each variant's convention.
    b_after = bias("chrono", cell="gru", chrono_max_len=100)
    b_before = bias("chrono", cell="gru", chrono_max_len=100, gru_variant="reset_before")
    assert np.all(b_after[64:128] >= 0) and np.all(b_before[64:128] <= 0)
    np.testing.assert_array_equal(bias("forget_bias", cell="gru")[64:128], 1.0)
    np.testing.assert_array_equal(bias("forget_bias", cell="gru",
                                       gru_variant="reset_before")[64:128], -1.0)
    t = layers.init(key, layers.Spec("gru", input_size=3, hidden_size=64, init="torch"))[0][0]
    for leaf in t:
        assert np.max(np.abs(leaf)) <= 1 / 8 and np.max(np.abs(leaf)) > 0.1
    d = layers.init(key, layers.Spec("gru", input_size=3, hidden_size=64))[0][0]
    for g in range(3):
        block = np.asarray(d.w_h[:, g * 64:(g + 1) * 64])
        np.testing.assert_allclose(block.T @ block, np.eye(64), atol=1e-5)


def test_spec_validation_messages():
    with pytest.raises(ValueError, match=r"cell: unknown value 'lstn'.*'rnn', 'lstm', 'gru'"):
        layers.Spec("lstn", 3, 4)
    with pytest.raises(ValueError, match=r"init: unknown.*'chrono'"):
        layers.Spec("lstm", 3, 4, init="xavier")
    with pytest.raises(ValueError, match="hidden_size: expected an integer >= 1, got 0"):
        layers.Spec("lstm", 3, 0)
    with pytest.raises(ValueError, match="num_layers"):
        layers.Spec("lstm", 3, 4, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout.*\[0, 1\)"):
        layers.Spec("lstm", 3, 4, dropout=1.0)
    with pytest.raises(ValueError, match="proj_size.*LSTM only"):
        layers.Spec("gru", 3, 4, proj_size=2)
    with pytest.raises(ValueError, match="chrono_max_len"):
        layers.Spec("lstm", 3, 4, init="chrono")
    spec = layers.Spec("lstm", 3, 4, num_layers=2)
    with pytest.raises(ValueError, match="num_layers=2"):
        layers.apply(spec, layers.init(jax.random.key(0), spec)[:1], jnp.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"I=3.*\(1, 2, 5\)"):
        layers.apply(spec, layers.init(jax.random.key(0), spec), jnp.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match=r"rank >= 3.*\(2, 3\)"):
        layers.apply(spec, layers.init(jax.random.key(0), spec), jnp.zeros((2, 3)))


def test_spec_is_hashable_and_jit_static(key):
    a = layers.Spec("lstm", 3, 4, init="forget_bias")
    b = layers.Spec(layers.CellType.LSTM, 3, 4, init=layers.Init.FORGET_BIAS)
    assert a == b and hash(a) == hash(b)
    f = jax.jit(lambda spec, p, x: layers.apply(spec, p, x), static_argnums=0)
    params = layers.init(key, a)
    f(a, params, jnp.ones((2, 5, 3)))
    f(b, params, jnp.zeros((2, 5, 3)))
    assert f._cache_size() == 1


def test_grad_through_stack_matches_finite_differences(key):
    with enable_x64():
        spec = layers.Spec("lstm", 2, 3, num_layers=2, bidirectional=True, dtype=jnp.float64,
                           init="torch")
        params = layers.init(key, spec)
        xs = jax.random.normal(key, (2, 4, 2), jnp.float64)
        lengths = jnp.array([4, 2])
        loss = lambda p: jnp.sum(jnp.tanh(layers.apply(spec, p, xs, seq_lengths=lengths)[0]))  # noqa: E731
        check_grads(loss, (params,), order=1, modes=("rev",))


def test_time_major_stack_matches_numpy(key):
    with enable_x64():
        spec = layers.Spec("gru", input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
                           init="torch", dtype=jnp.float64)
        params = layers.init(key, spec)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (3, 5, 3), jnp.float64)  # [B, T, I]
        lengths = np.array([5, 2, 4])
        ys_TxBxO, finals = layers.apply(spec, params, jnp.swapaxes(xs, 0, 1),
                                        seq_lengths=lengths, time_major=True)
        ys_ref, finals_ref = _numpy_stack(spec, params, xs, lengths)
        assert ys_TxBxO.shape == (5, 3, 8)
        np.testing.assert_allclose(np.swapaxes(ys_TxBxO, 0, 1), ys_ref, rtol=1e-12, atol=1e-14)
        for l in range(2):
            for d in range(2):
                np.testing.assert_allclose(finals[l][d].h,
                                           np.stack([s[0] for s in finals_ref[l][d]]),
                                           rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"\(5, 3, 4\) .*\[T, B, I\]|\[T, B, I\].*\(5, 3, 4\)"):
        layers.apply(layers.Spec("gru", 3, 4), layers.init(key, layers.Spec("gru", 3, 4)),
                     jnp.zeros((5, 3, 4)), time_major=True)


def test_spec_reads_pytorch_cell_names_in_any_case():
    for name, cell in [("LSTM", "lstm"), ("GRU", "gru"), ("RNN", "rnn"), ("Lstm", "lstm"),
                       ("RNN_TANH", "rnn")]:
        assert layers.Spec(name, 3, 4) == layers.Spec(cell, 3, 4)
    with pytest.raises(ValueError, match=r"cell: unknown value 'RNN_RELU'.*'rnn', 'lstm'"):
        layers.Spec("RNN_RELU", 3, 4)


def test_apply_takes_numpy_and_torch_inputs(key):
    spec = layers.Spec("lstm", 3, 4, num_layers=2)
    params = layers.init(key, spec)
    xs = np.array(jax.random.normal(key, (2, 5, 3)))
    want = layers.apply(spec, params, jnp.asarray(xs), seq_lengths=jnp.array([5, 2]))
    got = layers.apply(spec, params, xs, seq_lengths=np.array([5, 2]))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    torch = pytest.importorskip("torch")
    x_t = torch.from_numpy(xs).requires_grad_()  # as a torch module's output would be
    carry_t = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), want[1])
    got = layers.apply(spec, params, x_t, seq_lengths=torch.tensor([5, 2]))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    again = layers.apply(spec, params, x_t, initial_carry=carry_t)
    jax.tree.map(np.testing.assert_array_equal, again,
                 layers.apply(spec, params, jnp.asarray(xs), initial_carry=want[1]))
    with pytest.raises(ValueError, match=r"expected a floating dtype \(float32.*got int"):
        layers.apply(spec, params, torch.ones(2, 5, 3, dtype=torch.int64))


@pytest.mark.parametrize("field, value, message", [
    ("proj_size", 2.0, "proj_size: expected an integer >= 0, got 2.0"),
    ("dtype", jnp.int32, "dtype: expected a floating dtype"),
    ("bidirectional", "no", "bidirectional: expected a bool, got 'no'"),
    ("dropout", "0.5", "dropout: expected a rate in [0, 1), got '0.5'"),
    ("forget_bias", float("nan"), "forget_bias: expected a finite number, got nan"),
    ("chrono_max_len", 10, "chrono_max_len: only init='chrono' reads it"),
])
def test_spec_refuses_a_field_that_would_silently_change_the_model(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        layers.Spec("lstm", 3, 4, **{field: value})


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.uint8, bool])
def test_plan_and_scan_refuse_an_integer_matmul_dtype(key, dtype):
    with pytest.raises(ValueError, match="matmul_dtype: expected a floating dtype"):
        layers.Plan(matmul_dtype=dtype)
    with pytest.raises(ValueError, match="matmul_dtype: expected a floating dtype"):
        scan.run(lstm, lstm.init_params(key, 3, 4), jnp.ones((1, 2, 3)), matmul_dtype=dtype)


@pytest.mark.parametrize("options, message", [
    ({"unroll": True}, "unroll: expected an integer >= 1, got True"),
    ({"unroll": 0}, "unroll: expected an integer >= 1, got 0"),
    ({"remat": "yes"}, "remat: expected a bool, got 'yes'"),
])
def test_plan_and_scan_run_share_one_rule_for_unroll_and_remat(key, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        layers.Plan(**options)
    with pytest.raises(ValueError, match=re.escape(message)):
        scan.run(lstm, lstm.init_params(key, 3, 4), jnp.ones((1, 2, 3)), **options)
