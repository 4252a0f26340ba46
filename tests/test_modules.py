"""Pins the Flax wrappers (`gated_rnn.modules`) to the functional path.

With the same params, a linen cell inside `nn.RNN` / `nn.Bidirectional` gives what `scan.run` /
`layers.apply` give (also with `seq_lengths`, `reverse` and an initial carry), and the linen and
NNX stacks give what `layers.apply` gives. The modules' init is the functional init for the key
Flax hands the module (read back with a probe module that asks the same scope for its rng), and
dropout acts only when asked for. A jitted linen train step lowers the loss.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gated_rnn import layers, lstm, modules, scan
from tests import helpers

B, T, I, H = 3, 5, 4, 6
LENGTHS = jnp.array([5, 2, 4])


def _inputs(seed=1, shape=(B, T, I)):
    return jax.random.normal(jax.random.key(seed), shape)


def _valid(ys, lengths):
    """ys with the steps past each length zeroed (nn.RNN leaves them; scan.run zeroes them)."""
    mask = jnp.arange(ys.shape[1])[None, :] < lengths[:, None]
    return jnp.where(mask[..., None], ys, jnp.zeros_like(ys))


def _rng_of_scope(key, child=None, collection="params"):
    """The first key `make_rng(collection)` gives in the root scope, or in its `child`."""

    class Probe(nn.Module):
        @nn.compact
        def __call__(self):
            return self.make_rng(collection)

    class Root(nn.Module):
        @nn.compact
        def __call__(self):
            return Probe(name=child)()

    return (Probe() if child is None else Root()).apply({}, rngs={collection: key})


# (linen cell, matching one-layer spec options)
CELLS = {
    "rnn": (modules.RNNCell(hidden_size=H), dict(cell="rnn")),
    "lstm": (modules.LSTMCell(hidden_size=H, init_scheme="forget_bias"),
             dict(cell="lstm", init="forget_bias")),
    "lstm_proj": (modules.LSTMCell(hidden_size=H, proj_size=2), dict(cell="lstm", proj_size=2)),
    "gru": (modules.GRUCell(hidden_size=H), dict(cell="gru")),
    "gru_reset_before": (modules.GRUCell(hidden_size=H, gru_variant="reset_before"),
                         dict(cell="gru", gru_variant="reset_before")),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_linen_cell_in_nn_rnn_equals_scan_run(name, key):
    cell, options = CELLS[name]
    spec = layers.Spec(input_size=I, hidden_size=H, **options)
    assert cell.spec(I) == spec
    xs = _inputs()
    model = nn.RNN(cell, return_carry=True)
    variables = model.init(key, xs)
    flax_params = variables["params"]["cell"]
    params = modules.from_flax(flax_params, spec)
    assert set(flax_params) == {f for f, v in params._asdict().items() if v is not None}

    carry, ys = model.apply(variables, xs)
    want_carry, want_ys = scan.run(spec.cell_fns, params, xs)
    helpers.assert_trees_close((carry, ys), (modules.to_flax_carry(want_carry), want_ys),
                               rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("reverse", [False, True])
def test_nn_rnn_seq_lengths_and_initial_carry_equal_scan_run(reverse, key):
    cell = modules.LSTMCell(hidden_size=H)
    xs = _inputs()
    model = nn.RNN(cell, return_carry=True, reverse=reverse, keep_order=True)
    variables = model.init(key, xs)
    params = modules.from_flax(variables["params"]["cell"], cell.spec(I))
    carry0 = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape),
                          cell.initialize_carry(key, (B, I)))

    carry, ys = model.apply(variables, xs, seq_lengths=LENGTHS, initial_carry=carry0)
    c0, h0 = carry0  # Flax's (c, h)
    want_carry, want_ys = scan.run(lstm, params, xs, carry=lstm.Carry(h=h0, c=c0),
                                   seq_lengths=LENGTHS, reverse=reverse)
    helpers.assert_trees_close((carry, _valid(ys, LENGTHS)),
                               (modules.to_flax_carry(want_carry), want_ys), rtol=1e-6,
                               atol=1e-7)


def test_nn_bidirectional_equals_bidirectional_layer(key):
    xs = _inputs()
    model = nn.Bidirectional(nn.RNN(modules.GRUCell(hidden_size=H)),
                             nn.RNN(modules.GRUCell(hidden_size=H)), return_carry=True)
    variables = model.init(key, xs)
    spec = layers.Spec("gru", I, H, bidirectional=True)
    params = ((modules.from_flax(variables["params"]["forward_rnn"]["cell"], spec),
               modules.from_flax(variables["params"]["backward_rnn"]["cell"], spec)),)
    assert not np.allclose(params[0][0].w_x, params[0][1].w_x)  # two independent draws

    (fwd, bwd), ys = model.apply(variables, xs, seq_lengths=LENGTHS)
    want_ys, want_carries = layers.apply(spec, params, xs, seq_lengths=LENGTHS)
    helpers.assert_trees_close((_valid(ys, LENGTHS), fwd, bwd),
                               (want_ys, *map(modules.to_flax_carry, want_carries[0])),
                               rtol=1e-6, atol=1e-7)


# (linen stack, NNX stack, matching spec options)
STACKS = {
    "lstm_2x_bidir_proj": (modules.LSTM, modules.NNXLSTM,
                           dict(num_layers=2, bidirectional=True, proj_size=3)),
    "gru_reset_before_2x": (modules.GRU, modules.NNXGRU,
                            dict(num_layers=2, gru_variant="reset_before")),
    "rnn": (modules.RNN, modules.NNXRNN, dict()),
}


@pytest.mark.parametrize("name", list(STACKS))
def test_linen_stack_equals_layers_apply(name, key):
    linen_cls, _, options = STACKS[name]
    model = linen_cls(hidden_size=H, **options)
    spec = model.spec(I)
    assert spec.cell is linen_cls.CELL_TYPE and spec.num_layers == options.get("num_layers", 1)
    xs = _inputs()
    params = layers.init(jax.random.key(3), spec)
    initial = jax.tree.map(lambda a: a + 0.5, layers.zero_carries(spec, params, (B,)))

    variables = jax.eval_shape(model.init, key, xs)  # the tree only; values: the next tests
    assert (jax.tree.map(jnp.shape, variables["params"])
            == jax.tree.map(jnp.shape, modules.to_flax(params)))
    got = model.apply({"params": modules.to_flax(params)}, xs, seq_lengths=LENGTHS,
                      initial_carry=initial)
    want = layers.apply(spec, params, xs, seq_lengths=LENGTHS, initial_carry=initial)
    helpers.assert_trees_close(got, want, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("cell, spec_options", [
    (modules.LSTMCell(hidden_size=H, init_scheme="forget_bias", forget_bias=2.0),
     dict(cell="lstm", init="forget_bias", forget_bias=2.0)),
    (modules.GRUCell(hidden_size=H, init_scheme="chrono", chrono_max_len=50),
     dict(cell="gru", init="chrono", chrono_max_len=50)),
    (modules.RNNCell(hidden_size=H, init_scheme="torch"), dict(cell="rnn", init="torch")),
])
def test_linen_cell_init_is_the_functional_init(cell, spec_options, key):
    spec = layers.Spec(input_size=I, hidden_size=H, **spec_options)
    x = _inputs()[:, 0]
    variables = cell.init(key, cell.initialize_carry(key, x.shape), x)
    cell_key = _rng_of_scope(key)
    helpers.assert_trees_close(variables["params"],
                               modules.to_flax(layers.init_cell(cell_key, spec, 0)), rtol=0)
    if spec.cell is layers.CellType.LSTM:  # the scheme reached the bias: i, f, g, o blocks
        np.testing.assert_array_equal(variables["params"]["b"].reshape(4, H),
                                      np.array([0.0, 2.0, 0.0, 0.0])[:, None] * np.ones(H))


def test_linen_stack_init_is_the_functional_init_per_layer(key):
    model = modules.LSTM(hidden_size=H, num_layers=2, bidirectional=True)
    spec = model.spec(I)
    variables = model.init(key, _inputs())
    for l in range(2):
        for d, direction in enumerate(("fwd", "bwd")):
            name = f"layer{l}_{direction}"
            layer_key = _rng_of_scope(key, name)
            helpers.assert_trees_close(variables["params"][name],
                                       modules.to_flax(layers.init_cell(layer_key, spec, l)),
                                       rtol=0, err_msg=name)
    w_h = variables["params"]["layer1_bwd"]["w_h"]  # each gate's block is orthogonal
    for g in range(4):
        block = w_h[:, g * H:(g + 1) * H]
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)


def test_linen_dropout_only_when_not_deterministic(key):
    model = modules.GRU(hidden_size=H, num_layers=2, dropout=0.5)
    spec = model.spec(I)
    xs = _inputs()
    params = layers.init(key, spec)
    variables = {"params": modules.to_flax(params)}
    dropout_rng = jax.random.key(4)

    off = model.apply(variables, xs, rngs={"dropout": dropout_rng})
    helpers.assert_trees_close(off, layers.apply(spec, params, xs), rtol=1e-6)
    on = model.apply(variables, xs, deterministic=False, rngs={"dropout": dropout_rng})
    dropout_key = _rng_of_scope(dropout_rng, collection="dropout")
    helpers.assert_trees_close(on, layers.apply(spec, params, xs, dropout_key=dropout_key),
                               rtol=1e-6)
    assert np.abs(on[0] - off[0]).max() > 1e-2


@pytest.mark.parametrize("cls, options, spec_options", [
    (modules.NNXLSTMCell, dict(init_scheme="forget_bias", proj_size=2),
     dict(cell="lstm", init="forget_bias", proj_size=2)),
    (modules.NNXGRUCell, dict(gru_variant="reset_before"),
     dict(cell="gru", gru_variant="reset_before")),
])
def test_nnx_cell_in_nnx_rnn_equals_scan_run(cls, options, spec_options):
    cell = cls(I, H, rngs=nnx.Rngs(7), **options)
    spec = layers.Spec(input_size=I, hidden_size=H, **spec_options)
    assert cell.spec == spec
    helpers.assert_trees_close(cell.params, layers.init_cell(nnx.Rngs(7).params(), spec, 0),
                               rtol=0)
    assert (set(nnx.state(cell, nnx.Param))
            == {f for f, v in cell.params._asdict().items() if v is not None})

    xs = _inputs()
    carry, ys = nnx.RNN(cell, return_carry=True)(xs, seq_lengths=LENGTHS)
    want_carry, want_ys = scan.run(spec.cell_fns, cell.params, xs, seq_lengths=LENGTHS)
    helpers.assert_trees_close((carry, _valid(ys, LENGTHS)),
                               (modules.to_flax_carry(want_carry), want_ys), rtol=1e-6,
                               atol=1e-7)


def test_nnx_stack_equals_layers_apply_with_and_without_dropout():
    model = modules.NNXLSTM(I, H, num_layers=2, dropout=0.5, proj_size=2, rngs=nnx.Rngs(0))
    spec = model.spec
    assert spec == layers.Spec("lstm", I, H, num_layers=2, dropout=0.5, proj_size=2)
    helpers.assert_trees_close(model.params, layers.init(nnx.Rngs(0).params(), spec), rtol=0)
    xs = _inputs()

    other = layers.init(jax.random.key(9), spec)  # load functional params, e.g. from interop
    nnx.update(model, nnx.State(modules.to_flax(other)))
    helpers.assert_trees_close(modules.from_flax(nnx.state(model, nnx.Param), spec), other, rtol=0)
    helpers.assert_trees_close(model.params, other, rtol=0)

    model.eval()
    off = model(xs, seq_lengths=LENGTHS)
    helpers.assert_trees_close(off, layers.apply(spec, other, xs, seq_lengths=LENGTHS), rtol=1e-6)
    model.train()
    dropout_key = jax.random.key(4)
    on = model(xs, seq_lengths=LENGTHS, rngs=dropout_key)
    helpers.assert_trees_close(on, layers.apply(spec, other, xs, seq_lengths=LENGTHS,
                                                dropout_key=dropout_key), rtol=1e-6)
    assert np.abs(on[0] - off[0]).max() > 1e-2


def test_jitted_linen_train_step_lowers_loss(key):
    """Regress the mean of channel 0 over time with an LSTM stack -> Dense, Adam, 30 steps."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, xs):
            ys, _ = modules.LSTM(hidden_size=8, init_scheme="forget_bias")(xs)
            return nn.Dense(1)(ys[:, -1])[:, 0]

    xs = _inputs(seed=2, shape=(32, 6, 2))
    target = xs[:, :, 0].mean(axis=1)
    model = Model()
    params = jax.jit(model.init)(key, xs)["params"]
    optimizer = optax.adam(1e-2)

    def loss_fn(params):
        return jnp.mean((model.apply({"params": params}, xs) - target) ** 2)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(30):
        params, opt_state, loss = train_step(params, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0], losses


def test_bad_inputs_raise_value_errors(key):
    cell = modules.LSTMCell(hidden_size=H)
    x = _inputs()[:, 0]
    variables = cell.init(key, cell.initialize_carry(key, x.shape), x)
    with pytest.raises(ValueError, match=r"h has shape \(3, 5\), expected \[..., 6\] "
                                         r"\(hidden_size, Flax's features = 6\)"):
        cell.apply(variables, (jnp.zeros((B, 5)), jnp.zeros((B, 5))), x)
    with pytest.raises(ValueError, match=r"expected Flax's LSTM carry, the tuple \(c, h\)"):
        cell.apply(variables, lstm.init_carry((B,), H), x)
    with pytest.raises(ValueError, match="unknown value 'chrono_typo'"):
        modules.GRU(hidden_size=H, init_scheme="chrono_typo").init(key, _inputs())
    with pytest.raises(ValueError, match="proj_size"):
        modules.NNXGRUCell(I, H, proj_size=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="layer1_fwd"):
        modules.from_flax({"layer0_fwd": {}}, layers.Spec("lstm", I, H, num_layers=2))


def test_time_major_stacks_equal_batch_major_layers_apply(key):
    linen_model = modules.GRU(hidden_size=H, num_layers=2, bidirectional=True, time_major=True)
    nnx_model = modules.NNXGRU(I, H, num_layers=2, bidirectional=True, time_major=True,
                               rngs=nnx.Rngs(0))
    spec = linen_model.spec(I)
    assert spec == nnx_model.spec
    params = layers.init(jax.random.key(3), spec)
    nnx.update(nnx_model, nnx.State(modules.to_flax(params)))
    xs = _inputs()
    ys, finals = layers.apply(spec, params, xs, seq_lengths=LENGTHS)  # [B, T, 2H]
    for got in (linen_model.apply({"params": modules.to_flax(params)}, jnp.swapaxes(xs, 0, 1),
                                  seq_lengths=LENGTHS),
                nnx_model(jnp.swapaxes(xs, 0, 1), seq_lengths=LENGTHS)):
        assert got[0].shape == (T, B, 2 * H)
        helpers.assert_trees_close((jnp.swapaxes(got[0], 0, 1), got[1]), (ys, finals),
                                   rtol=1e-6)
