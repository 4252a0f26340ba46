"""Pins our Flax cells as drop-ins for Flax's own: the code a Flax user writes works unchanged.

Each Flax idiom is checked against Flax's own module, not against our code: constructor keywords
(`features`; NNX `in_features` / `hidden_features`), Flax's carries ((c, h) for the LSTM, a bare
array for the GRU and the simple cell), `dtype` / `param_dtype`, initializer callables
(`carry_init` draws what Flax's cell draws), and checkpoints of Flax's `LSTMCell`,
`OptimizedLSTMCell`, `GRUCell`, `SimpleCell` (linen trees and NNX states) converted both ways,
with the same step outputs as Flax's module; the sst2 example's `nn.scan` over the cell class.
Half precision: a bfloat16 Spec and bfloat16 cells against float32, with the accuracy stated.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gated_rnn import gru, layers, lstm, modules
from tests import helpers

B, I, H = 2, 3, 4


def _x(seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), (B, I)).astype(dtype)


def _random_carry(carry, seed=2):
    """A Flax carry of the same structure, with random values (so c and h differ)."""
    leaves, tree = jax.tree_util.tree_flatten(carry)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


# Flax's cell class -> our linen or NNX cell class.
LINEN = {nn.LSTMCell: modules.LSTMCell, nn.OptimizedLSTMCell: modules.LSTMCell,
         nn.GRUCell: modules.GRUCell, nn.SimpleCell: modules.RNNCell}
NNX = {nnx.LSTMCell: modules.NNXLSTMCell, nnx.OptimizedLSTMCell: modules.NNXLSTMCell,
       nnx.GRUCell: modules.NNXGRUCell, nnx.SimpleCell: modules.NNXRNNCell}


@pytest.mark.parametrize("flax_cls", list(LINEN), ids=lambda c: c.__name__)
def test_linen_checkpoint_converts_both_ways_with_flaxs_step_outputs(flax_cls):
    # The same code for both: features=, initialize_carry(rng, shape), apply(v, carry, x).
    theirs, ours = flax_cls(features=H), LINEN[flax_cls](features=H)
    x = _x()
    carry = _random_carry(theirs.initialize_carry(jax.random.key(0), x.shape))
    flax_vars = theirs.init(jax.random.key(3), carry, x)
    params = modules.from_flax_cell(flax_vars["params"], flax_cls)
    want = theirs.apply(flax_vars, carry, x)
    got = ours.apply({"params": modules.to_flax(params)}, carry, x)
    helpers.assert_trees_close(got, want, rtol=1e-6, atol=1e-6)  # same carry structure too
    # Back: our params (from our own init) into Flax's module give our cell's step.
    our_vars = ours.init(jax.random.key(4), carry, x)
    params = modules.from_flax(our_vars["params"], ours.spec(I))
    back = modules.to_flax_cell(params, flax_cls)
    assert jax.tree.map(jnp.shape, back) == jax.tree.map(jnp.shape, flax_vars["params"])
    helpers.assert_trees_close(theirs.apply({"params": back}, carry, x),
                               ours.apply(our_vars, carry, x), rtol=1e-6, atol=1e-6)
    # The round trip is exact.
    helpers.assert_trees_close(modules.to_flax_cell(modules.from_flax_cell(
        flax_vars["params"], flax_cls), flax_cls), flax_vars["params"], rtol=0)


@pytest.mark.parametrize("flax_cls", list(NNX), ids=lambda c: c.__name__)
def test_nnx_checkpoint_converts_both_ways_with_flaxs_step_outputs(flax_cls):
    theirs = flax_cls(in_features=I, hidden_features=H, rngs=nnx.Rngs(0))
    ours = NNX[flax_cls](in_features=I, hidden_features=H, rngs=nnx.Rngs(1))
    x = _x()
    carry = _random_carry(theirs.initialize_carry(x.shape, nnx.Rngs(0)))
    if flax_cls is nnx.GRUCell:  # no b_hn in nnx.GRUCell: ours must have b_hn = 0 to go back
        ours.b_hn.set_value(jnp.zeros_like(ours.b_hn.get_value()))
    params = modules.from_flax_cell(nnx.state(theirs, nnx.Param), flax_cls)
    nnx.update(ours, nnx.State(modules.to_flax(params)))
    helpers.assert_trees_close(ours(carry, x), theirs(carry, x), rtol=1e-6, atol=1e-6)
    back = NNX[flax_cls](I, H, rngs=nnx.Rngs(2))
    if flax_cls is nnx.GRUCell:
        back.b_hn.set_value(jnp.zeros_like(back.b_hn.get_value()))
    nnx.update(theirs, nnx.State(modules.to_flax_cell(back.params, flax_cls)))
    helpers.assert_trees_close(theirs(carry, x), back(carry, x), rtol=1e-6, atol=1e-6)


def test_a_gru_with_a_recurrent_candidate_bias_is_refused_by_nnx_grucell():
    params = modules.NNXGRUCell(I, H, rngs=nnx.Rngs(0), bias_init=nn.initializers.ones).params
    with pytest.raises(ValueError, match="nnx.GRUCell has no recurrent candidate bias"):
        modules.to_flax_cell(params, nnx.GRUCell)
    with pytest.raises(ValueError, match=r"to_flax_cell: nn.GRUCell takes gated_rnn.gru.Params, "
                                         r"got gated_rnn.lstm.Params"):
        modules.to_flax_cell(lstm.init_params(jax.random.key(0), I, H), nn.GRUCell)


def test_flax_code_that_unpacks_c_h_reads_the_right_state():
    # `c, h = carry` on our LSTM carry used to swap them silently: the carry is Flax's (c, h).
    cell = modules.LSTMCell(features=H)
    x = _x()
    carry = _random_carry(cell.initialize_carry(jax.random.key(0), x.shape))
    variables = cell.init(jax.random.key(3), carry, x)
    (c, h), y = cell.apply(variables, carry, x)
    params = modules.from_flax(variables["params"], cell.spec(I))
    want, _ = lstm.step(params, lstm.Carry(h=carry[1], c=carry[0]), x)
    np.testing.assert_array_equal(h, y)
    np.testing.assert_allclose(c, want.c, rtol=1e-6)
    np.testing.assert_allclose(h, want.h, rtol=1e-6)


def test_carry_errors_speak_flax():
    cell, gru_cell = modules.LSTMCell(features=H), modules.GRUCell(features=H)
    x = _x()
    variables = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(0), x.shape), x)
    gru_vars = gru_cell.init(jax.random.key(0), jnp.zeros((B, H)), x)
    with pytest.raises(ValueError, match=r"LSTMCell carry: expected Flax's LSTM carry, the tuple "
                                         r"\(c, h\).*lstm.Carry is ordered \(h, c\)"):
        cell.apply(variables, lstm.init_carry((B,), H), x)
    with pytest.raises(ValueError, match=r"GRUCell carry: expected Flax's carry, a bare \[..., H\] "
                                         r"array.*pass carry.h"):
        gru_cell.apply(gru_vars, gru.init_carry((B,), H), x)
    with pytest.raises(ValueError, match=r"h has shape \(2, 5\), expected \[..., 4\] "
                                         r"\(hidden_size, Flax's features = 4\)"):
        gru_cell.apply(gru_vars, jnp.zeros((B, 5)), x)
    with pytest.raises(ValueError, match="pass the hidden size once"):
        modules.LSTMCell(hidden_size=4, features=5).spec(I)
    with pytest.raises(ValueError, match="pass the hidden size once"):
        modules.NNXGRUCell(I, rngs=nnx.Rngs(0))


def test_constructor_keywords_and_initializers_have_flaxs_meaning():
    x = _x()
    # features= is hidden_size=; NNX in_features/hidden_features are input_size/hidden_size.
    assert modules.LSTMCell(features=H).spec(I) == modules.LSTMCell(H).spec(I)
    assert (modules.NNXLSTMCell(in_features=I, hidden_features=H, rngs=nnx.Rngs(0)).spec
            == modules.NNXLSTMCell(input_size=I, hidden_size=H, rngs=nnx.Rngs(0)).spec)
    # Initializer callables: per gate block, as Flax's one Dense per gate.
    cell = modules.GRUCell(features=H, kernel_init=nn.initializers.zeros,
                           recurrent_kernel_init=nn.initializers.orthogonal(),
                           bias_init=nn.initializers.constant(0.5))
    p = cell.init(jax.random.key(0), jnp.zeros((B, H)), x)["params"]
    assert not np.any(p["w_x"])
    np.testing.assert_array_equal(p["b"], 0.5)
    np.testing.assert_array_equal(p["b_hn"], 0.5)
    for g in range(3):
        block = np.asarray(p["w_h"][:, g * H:(g + 1) * H])
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    # carry_init draws what Flax's own cell draws from the same rng (LSTM: c, h from two keys).
    for theirs, ours in ((nn.LSTMCell, modules.LSTMCell), (nn.GRUCell, modules.GRUCell)):
        init = nn.initializers.normal(1.0)
        helpers.assert_trees_close(
            ours(features=H, carry_init=init).initialize_carry(jax.random.key(5), x.shape),
            theirs(features=H, carry_init=init).initialize_carry(jax.random.key(5), x.shape),
            rtol=0)
    ours = modules.NNXLSTMCell(I, H, rngs=nnx.Rngs(0), carry_init=nn.initializers.ones)
    c, h = ours.initialize_carry(x.shape, nnx.Rngs(carry=1))
    np.testing.assert_array_equal(c, 1.0)


def test_dtype_computes_param_dtype_stores_and_inputs_are_promoted():
    x = _x()
    f32 = modules.LSTMCell(features=H)
    carry = _random_carry(f32.initialize_carry(jax.random.key(0), x.shape))
    variables = f32.init(jax.random.key(0), carry, x)
    want = f32.apply(variables, carry, x)
    # A float16 input into a float32 cell is promoted (float16 -> float32 is exact), not refused.
    helpers.assert_trees_close(f32.apply(variables, carry, x.astype(jnp.float16)),
                               f32.apply(variables, carry, x.astype(jnp.float16)
                                         .astype(jnp.float32)), rtol=0)
    # param_dtype stores; the carry comes in param_dtype.
    half = modules.LSTMCell(features=H, param_dtype=jnp.bfloat16)
    half_carry = half.initialize_carry(jax.random.key(0), x.shape)
    assert all(a.dtype == jnp.bfloat16 for a in half_carry)
    half_vars = half.init(jax.random.key(0), half_carry, x)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(half_vars))
    # dtype computes: float32 params, bfloat16 math; carry and output keep the carry's dtype.
    # Accuracy against float32 for one step from a random carry: within 2e-2 (measured 0.0044;
    # bfloat16 has an 8-bit mantissa, ~4e-3 relative per rounding).
    got = modules.LSTMCell(features=H, dtype=jnp.bfloat16).apply(variables, carry, x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(got))
    helpers.assert_trees_close(got, want, rtol=0, atol=2e-2)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got),
                                                             jax.tree.leaves(want))) > 0


def test_bfloat16_cells_in_nn_rnn_and_nnx_rnn_track_float32():
    # Eight steps of bfloat16 params and math against the same params in float32: max abs error
    # under 2e-2 on outputs up to ~1 (measured with these seeds: GRU 0.0067, LSTM 0.0055).
    xs = jax.random.normal(jax.random.key(1), (B, 8, I))
    model = nn.RNN(modules.GRUCell(features=H))
    variables = model.init(jax.random.key(0), xs)
    want = model.apply(variables, xs)
    half = nn.RNN(modules.GRUCell(features=H, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16))
    got = half.apply(jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables),
                     xs.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2)

    f32 = modules.NNXLSTMCell(I, H, rngs=nnx.Rngs(0))
    bf16 = modules.NNXLSTMCell(I, H, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    helpers.assert_trees_close(bf16.params, jax.tree.map(lambda a: a.astype(jnp.bfloat16),
                                                         f32.params), rtol=0)
    want = nnx.RNN(f32)(xs)
    got = nnx.RNN(bf16)(xs.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2)


def test_bfloat16_spec_tracks_float32():
    # A bfloat16 stack (params, state and math in bfloat16) against the float32 stack whose
    # params it rounds: init succeeds for the orthogonal default, and over 8 steps of a 2-layer
    # LSTM the outputs stay within 2e-2 of float32 (measured 0.0040).
    spec = layers.Spec("lstm", I, H, num_layers=2, dtype=jnp.bfloat16)
    params = layers.init(jax.random.key(0), spec)
    full = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    xs = jax.random.normal(jax.random.key(1), (B, 8, I))
    ys, _ = layers.apply(spec, params, xs.astype(jnp.bfloat16))
    want, _ = layers.apply(layers.Spec("lstm", I, H, num_layers=2), full, xs)
    assert ys.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ys, np.float32), want, atol=2e-2)


def test_the_sst2_idiom_nn_scan_over_the_cell_class_gives_flaxs_numbers():
    # Flax's examples/sst2 scans the cell class by hand (nn.scan, params broadcast over time);
    # the same module code with our class, on Flax's converted params, gives Flax's outputs.
    class Encoder(nn.Module):
        cell_cls: type

        @nn.compact
        def __call__(self, xs):
            scanned = nn.scan(self.cell_cls, variable_broadcast="params",
                              split_rngs={"params": False}, in_axes=1, out_axes=1)
            carry = self.cell_cls(features=H, parent=None).initialize_carry(
                jax.random.key(0), xs[:, 0].shape)
            return scanned(features=H, name="cell")(carry, xs)

    xs = jax.random.normal(jax.random.key(1), (B, 5, I))
    theirs, ours = Encoder(nn.OptimizedLSTMCell), Encoder(modules.LSTMCell)
    flax_vars = theirs.init(jax.random.key(0), xs)
    params = modules.from_flax_cell(flax_vars["params"]["cell"], nn.OptimizedLSTMCell)
    assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), xs)["params"]["cell"])
            == jax.tree.map(jnp.shape, modules.to_flax(params)))
    helpers.assert_trees_close(ours.apply({"params": {"cell": modules.to_flax(params)}}, xs),
                               theirs.apply(flax_vars, xs), rtol=1e-6, atol=1e-6)
