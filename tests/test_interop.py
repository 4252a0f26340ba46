"""Pins gated_rnn against PyTorch's nn.LSTM / nn.GRU / nn.RNN through `interop`.

Golden files (tests/golden/torch_*.npz, written by scripts/make_golden.py with torch) are checked
on every run without torch: outputs, final states and the gradients of a random linear function
of them w.r.t. the inputs and every weight. A live comparison with fresh random weights runs when
torch imports. Plus exact round trips and the error messages.

Relative error of an array = max |actual - expected| / max |expected|; float32 <= 1e-5,
float64 <= 1e-12 (the bound issue 2 sets).

The short path a PyTorch user takes (issue 15): a small word language model (PyTorch's
word_language_model example: embedding -> time-major nn.LSTM / nn.GRU -> decoder) converted
with one call (`interop.load_torch`), evaluated in bptt chunks carrying torch's own state
tuples, against torch's loss (live) and against golden files (tests/golden/torch_lm_*.npz);
`spec_from_torch`, prefixes, `to_torch(..., like=)` and the messages of what is refused.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from gated_rnn import gru, interop, layers, lstm, rnn

GOLDEN = pathlib.Path(__file__).parent / "golden"
CASES = ["lstm_1layer", "lstm_2layer_bidir", "lstm_proj", "gru_2layer_bidir", "rnn_tanh",
         "lstm_packed_bidir", "gru_packed_bidir"]
LM_CASES = ["lm_lstm", "lm_gru"]  # float32 only
TOL = {"float32": 1e-5, "float64": 1e-12}


def rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / (scale if scale > 0 else 1.0))


def _x64(dtype: str):
    return enable_x64(dtype == "float64")


def _rows(carries, field: str) -> jax.Array:
    """final_carries[layer][direction].field stacked as PyTorch's [layers * D, B, ...]."""
    return jnp.stack([getattr(c, field) for layer in carries for c in layer])


def _grads_to_torch(grads, spec: layers.Spec) -> dict:
    """Gradients w.r.t. params in PyTorch's layout and names.

    to_torch puts a summed bias's gradient into bias_ih; the gradient w.r.t. bias_hh of a
    summed bias is that same gradient (all of an LSTM/RNN bias; the GRU's r and z blocks).
    """
    out = interop.to_torch(grads, spec)
    summed = slice(0, 2 * spec.hidden_size) if spec.cell is layers.CellType.GRU else slice(None)
    for k in out:
        if k.startswith("bias_hh"):
            out[k][summed] = out[k.replace("bias_hh", "bias_ih")][summed]
    return out


def _load(name: str, dtype: str) -> tuple[dict, dict, layers.Spec]:
    with np.load(GOLDEN / f"torch_{name}_{dtype}.npz") as f:
        data = {k: f[k] for k in f.files}
    config = json.loads(str(data.pop("config")))
    spec = layers.Spec(cell=config["cell"], input_size=config["input_size"],
                       hidden_size=config["hidden_size"], num_layers=config["num_layers"],
                       bidirectional=config["bidirectional"], proj_size=config["proj_size"],
                       dtype=config["dtype"])
    return data, config, spec


def golden_errors(name: str, dtype: str) -> dict[str, float]:
    """Relative errors of every array in one golden file (call under the dtype's x64 mode)."""
    data, config, spec = _load(name, dtype)
    state_dict = {k[len("param."):]: v for k, v in data.items() if k.startswith("param.")}
    params = interop.from_torch(state_dict, spec)
    lengths = jnp.asarray(data["lengths"], jnp.int32) if config["packed"] else None
    is_lstm = spec.cell is layers.CellType.LSTM

    def loss(params, x):
        ys, finals = layers.apply(spec, params, x, seq_lengths=lengths)
        total = jnp.sum(ys * data["cot_y"]) + jnp.sum(_rows(finals, "h") * data["cot_h"])
        if is_lstm:
            total = total + jnp.sum(_rows(finals, "c") * data["cot_c"])
        return total, (ys, finals)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (g_params, g_x), (ys, finals) = grad_fn(params, jnp.asarray(data["x"]))
    assert ys.dtype == spec.dtype
    states = interop.carry_to_torch(finals, spec)
    h_n, c_n = states if is_lstm else (states, None)
    errors = {"y": rel_err(ys, data["y"]), "h_n": rel_err(h_n, data["h_n"]),
              "grad.x": rel_err(g_x, data["grad.x"])}
    if is_lstm:
        errors["c_n"] = rel_err(c_n, data["c_n"])
    torch_grads = _grads_to_torch(g_params, spec)
    assert sorted(torch_grads) == sorted(state_dict)
    for k, g in torch_grads.items():
        errors[f"grad.{k}"] = rel_err(g, data[f"grad.{k}"])
    return errors


def _random_params(spec: layers.Spec, seed: int = 0) -> tuple:
    """Params with every entry U(-1, 1) (cheaper than layers.init; no zero biases)."""
    rng = np.random.default_rng(seed)
    return interop.from_torch({k: rng.uniform(-1.0, 1.0, shape)
                               for k, shape in interop.expected_keys(spec).items()}, spec)


def test_golden_files_are_all_checked():
    found = sorted(p.name for p in GOLDEN.glob("torch_*.npz"))
    assert found == sorted([f"torch_{c}_{d}.npz" for c in CASES for d in TOL]
                           + [f"torch_{c}_float32.npz" for c in LM_CASES])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", CASES)
def test_golden(name, dtype):
    with _x64(dtype):
        errors = golden_errors(name, dtype)
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"relative errors above {TOL[dtype]}: {bad}"


def test_to_torch_key_order_matches_torch():
    data, _, spec = _load("lstm_proj", "float32")
    params = _random_params(spec)
    golden_keys = [k[len("param."):] for k in data if k.startswith("param.")]
    assert list(interop.to_torch(params, spec)) == golden_keys
    assert list(interop.expected_keys(spec)) == golden_keys


# --- Round trips (no torch) ---------------------------------------------------------------

ROUND_TRIP_SPECS = [
    dict(cell="lstm", input_size=3, hidden_size=5, num_layers=2, bidirectional=True,
         proj_size=2),
    dict(cell="lstm", input_size=4, hidden_size=6),
    dict(cell="gru", input_size=3, hidden_size=4, num_layers=3, bidirectional=True),
    dict(cell="rnn", input_size=2, hidden_size=3, num_layers=2),
]


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kwargs", ROUND_TRIP_SPECS, ids=lambda k: k["cell"])
def test_round_trip_is_exact(kwargs, dtype):
    with _x64(dtype):
        spec = layers.Spec(**kwargs, dtype=dtype)
        params = _random_params(spec)
        assert params[0][0].w_x.dtype == spec.dtype
        if spec.cell is layers.CellType.LSTM:
            assert (params[0][0].w_hr is None) == (spec.proj_size == 0)  # as layers.init
        sd = interop.to_torch(params, spec)
        assert list(sd) == list(interop.expected_keys(spec))
        for k, v in sd.items():
            assert isinstance(v, np.ndarray) and v.dtype == spec.dtype and v.flags.writeable
            assert v.shape == interop.expected_keys(spec)[k], k
        _assert_trees_equal(interop.from_torch(sd, spec), params)


def test_to_torch_splits_biases():
    spec = layers.Spec(cell="gru", input_size=3, hidden_size=4)
    p = _random_params(spec)[0][0]
    sd = interop.to_torch(((p,),), spec)
    np.testing.assert_array_equal(sd["weight_ih_l0"], np.asarray(p.w_x).T)
    np.testing.assert_array_equal(sd["weight_hh_l0"], np.asarray(p.w_h).T)
    np.testing.assert_array_equal(sd["bias_ih_l0"], p.b)
    np.testing.assert_array_equal(sd["bias_hh_l0"], np.concatenate([np.zeros(8), p.b_hn]))


def test_from_torch_copies_its_inputs():
    spec = layers.Spec(cell="lstm", input_size=3, hidden_size=4)
    sd = interop.to_torch(_random_params(spec), spec)
    before = {k: v.copy() for k, v in sd.items()}
    params = interop.from_torch(sd, spec)
    for v in sd.values():
        v += 1.0  # an in-place update of the source (an optimizer step) must not leak
    _assert_trees_equal(params, interop.from_torch(before, spec))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_carry_round_trip(cell):
    spec = layers.Spec(cell=cell, input_size=3, hidden_size=5, num_layers=2, bidirectional=True,
                       proj_size=2 if cell == "lstm" else 0)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((4, 3, 2 if cell == "lstm" else 5)).astype(np.float32)
    c = rng.standard_normal((4, 3, 5)).astype(np.float32) if cell == "lstm" else None
    carries = interop.carry_from_torch(h, c, spec=spec)
    # Row layer * directions + direction.
    np.testing.assert_array_equal(carries[1][0].h, h[2])
    np.testing.assert_array_equal(carries[0][1].h, h[1])
    back = interop.carry_to_torch(carries, spec)
    for got, want in zip(back if c is not None else (back,), (h, c) if c is not None else (h,)):
        np.testing.assert_array_equal(got, want)
    kind = {"lstm": lstm.Carry, "gru": gru.Carry, "rnn": rnn.Carry}[cell]
    assert len(carries) == 2 and all(len(l) == 2 for l in carries)
    assert all(type(c) is kind for l in carries for c in l)


# --- Errors -------------------------------------------------------------------------------

SPEC = layers.Spec(cell="lstm", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)


def _sd():
    return interop.to_torch(_random_params(SPEC), SPEC)


def _without(sd, k):
    del sd[k]
    return sd


@pytest.mark.parametrize("make_sd, match", [
    (lambda: _without(_sd(), "bias_hh_l1_reverse"), r"missing keys \['bias_hh_l1_reverse'\]"),
    (lambda: {**_sd(), "weight_ih_l2": np.zeros((16, 8))}, r"unexpected keys \['weight_ih_l2'\]"),
    (lambda: {**_sd(), "weight_hh_l0": np.zeros((16, 5))},
     r"weight_hh_l0: expected shape \(16, 4\) \[4H, H\] with H=4, I=3.*got \(16, 5\)"),
    (lambda: {**_sd(), "weight_ih_l1": np.zeros((16, 4))},
     r"weight_ih_l1: expected shape \(16, 8\) \[4H, H \* directions\].*got \(16, 4\)"),
    (lambda: {**_sd(), "bias_ih_l0": np.zeros(16, np.int32)}, r"bias_ih_l0: expected a floating"),
    (lambda: list(_sd().items()), r"state_dict must be a mapping"),
    (lambda: {k: v for k, v in _sd().items() if not k.startswith("bias")},
     r"missing keys \['bias_ih_l0', .*bias=False module has no bias keys"),
])
def test_from_torch_errors(make_sd, match):
    with pytest.raises(ValueError, match=match):
        interop.from_torch(make_sd(), SPEC)


def test_from_torch_names_mismatched_spec():
    uni = layers.Spec(cell="lstm", input_size=3, hidden_size=4, num_layers=2)
    with pytest.raises(ValueError, match=r"bidirectional=False.*unexpected keys \['bias_hh_l0_re"):
        interop.from_torch(_sd(), uni)
    proj = layers.Spec(cell="lstm", input_size=3, hidden_size=4, num_layers=2,
                       bidirectional=True, proj_size=2)
    with pytest.raises(ValueError, match=r"proj_size=2.*missing keys \['weight_hr_l0'"):
        interop.from_torch(_sd(), proj)


def test_reset_before_has_no_torch_counterpart():
    spec = layers.Spec(cell="gru", input_size=3, hidden_size=4, gru_variant="reset_before")
    after = layers.Spec(cell="gru", input_size=3, hidden_size=4)
    params = _random_params(after)
    for call in (lambda: interop.to_torch(params, spec),
                 lambda: interop.from_torch(interop.to_torch(params, after), spec),
                 lambda: interop.carry_from_torch(np.zeros((1, 2, 4), np.float32), spec=spec)):
        with pytest.raises(ValueError, match="gru_variant='reset_before' has no PyTorch"):
            call()


def test_to_torch_errors():
    params = _random_params(SPEC)
    with pytest.raises(ValueError, match=r"num_layers=2 layers of 2 direction\(s\); got \[2\]"):
        interop.to_torch(params[:1], SPEC)
    gru_params = _random_params(layers.Spec(cell="gru", input_size=3, hidden_size=4,
                                            num_layers=2, bidirectional=True))
    with pytest.raises(ValueError, match=r"params\[0\]\[0\] must be gated_rnn.lstm.Params"):
        interop.to_torch(gru_params, SPEC)
    bad = (params[0], (params[1][0], params[1][1]._replace(w_h=jnp.zeros((5, 16)))))
    with pytest.raises(ValueError, match=r"params\[1\]\[1\].w_h: expected shape \(4, 16\).*"
                                         r"got \(5, 16\)"):
        interop.to_torch(bad, SPEC)
    proj = layers.Spec(cell="lstm", input_size=3, hidden_size=4, num_layers=2,
                       bidirectional=True, proj_size=2)
    with pytest.raises(ValueError, match=r"params\[0\]\[0\].w_h: expected shape \(2, 16\)"):
        interop.to_torch(params, proj)


def test_carry_errors():
    spec = layers.Spec(cell="gru", input_size=3, hidden_size=4, num_layers=2)
    h = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="cell=lstm needs c"):
        interop.carry_from_torch(h, spec=SPEC)
    with pytest.raises(ValueError, match="cell=gru takes no c"):
        interop.carry_from_torch(h, h, spec=spec)
    with pytest.raises(ValueError, match=r"h: expected shape \(2, B, 4\) .* got \(1, 3, 4\)"):
        interop.carry_from_torch(h[:1], spec=spec)
    with pytest.raises(ValueError, match=r"carries must hold num_layers=2"):
        interop.carry_to_torch(((gru.Carry(h[0]),),), spec)


def test_float64_needs_x64():
    spec = layers.Spec(cell="rnn", input_size=3, hidden_size=4, dtype="float64")
    sd = {k: np.zeros(s) for k, s in interop.expected_keys(spec).items()}
    with enable_x64(False), pytest.raises(ValueError, match="needs jax_enable_x64"):
        interop.from_torch(sd, spec)


def test_library_never_imports_torch():
    code = ("import sys, gated_rnn, gated_rnn.interop, gated_rnn.layers; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=GOLDEN.parents[1])
    assert out.stdout.strip() == "[]"


# --- Live comparison against torch ----------------------------------------------------------

LIVE = [  # (spec kwargs, batch, time, lengths or None, with initial state)
    (dict(cell="lstm", input_size=3, hidden_size=5, num_layers=2, bidirectional=True,
          proj_size=3, dtype="float32"), 4, 7, [3, 7, 1, 5], True),
    (dict(cell="lstm", input_size=4, hidden_size=6, dtype="float64"), 3, 6, None, True),
    (dict(cell="gru", input_size=3, hidden_size=4, num_layers=3, bidirectional=True,
          dtype="float64"), 5, 8, [8, 2, 6, 6, 1], True),
    (dict(cell="gru", input_size=2, hidden_size=5, dtype="float32"), 3, 9, [4, 9, 7], False),
    (dict(cell="rnn", input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
          dtype="float32"), 3, 6, [6, 2, 5], True),
]


def _torch_module(torch, spec: layers.Spec):
    kwargs = dict(input_size=spec.input_size, hidden_size=spec.hidden_size,
                  num_layers=spec.num_layers, bidirectional=spec.bidirectional,
                  batch_first=True, dtype=getattr(torch, spec.dtype.name))
    if spec.cell is layers.CellType.LSTM:
        return torch.nn.LSTM(proj_size=spec.proj_size, **kwargs)
    if spec.cell is layers.CellType.GRU:
        return torch.nn.GRU(**kwargs)
    return torch.nn.RNN(nonlinearity="tanh", **kwargs)


def _torch_run(torch, module, x, lengths, state):
    """module on batch-first x (packed when lengths are given) -> NumPy (y, h_n[, c_n])."""
    x = torch.from_numpy(x)
    if lengths is None:
        y, out = module(x, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                         batch_first=True, enforce_sorted=False)
        y, out = module(packed, state)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True,
                                                      total_length=x.shape[1])
    out = out if isinstance(out, tuple) else (out,)
    return tuple(t.detach().numpy() for t in (y, *out))


def _ours(spec, params, x, lengths, initial):
    seq = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    ys, finals = layers.apply(spec, params, jnp.asarray(x), seq_lengths=seq,
                              initial_carry=initial)
    states = interop.carry_to_torch(finals, spec)
    return (np.asarray(ys), *(states if isinstance(states, tuple) else (states,)))


def _random_state(torch, spec, batch, gen):
    """Random PyTorch initial state: h_0, or (h_0, c_0) for an LSTM."""
    rows = spec.num_layers * spec.num_directions
    dtype = getattr(torch, spec.dtype.name)
    h = torch.randn(rows, batch, spec.proj_size or spec.hidden_size, generator=gen, dtype=dtype)
    if spec.cell is not layers.CellType.LSTM:
        return h
    return h, torch.randn(rows, batch, spec.hidden_size, generator=gen, dtype=dtype)


@pytest.mark.parametrize("case", LIVE, ids=lambda c: f"{c[0]['cell']}-{c[0]['dtype']}"
                         f"-L{c[0].get('num_layers', 1)}{'-packed' if c[3] else ''}")
def test_live_from_torch(case):
    torch = pytest.importorskip("torch")
    kwargs, batch, time, lengths, with_state = case
    with _x64(kwargs["dtype"]):
        spec = layers.Spec(**kwargs)
        gen = torch.Generator().manual_seed(1)
        module = _torch_module(torch, spec)
        with torch.no_grad():  # wider than the default U(+-1/sqrt H): saturates some gates
            for p in module.parameters():
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 2.0 - 1.0)
        x = torch.randn(batch, time, spec.input_size, generator=gen,
                        dtype=module.weight_ih_l0.dtype).numpy()
        torch_state = _random_state(torch, spec, batch, gen) if with_state else None
        initial = None
        if with_state:
            h, c = torch_state if isinstance(torch_state, tuple) else (torch_state, None)
            initial = interop.carry_from_torch(h, c, spec=spec)
        params = interop.from_torch(dict(module.named_parameters()), spec)  # requires_grad
        want = _torch_run(torch, module, x, lengths, torch_state)
        got = _ours(spec, params, x, lengths, initial)
        for name, g, w in zip(["y", "h_n", "c_n"], got, want):
            assert rel_err(g, w) <= TOL[kwargs["dtype"]], (name, rel_err(g, w))
        if lengths is not None:  # zeros past each length, as pad_packed_sequence gives
            assert not np.any(got[0][np.arange(time)[None, :] >= np.array(lengths)[:, None]])

        # to_torch(from_torch(sd)) loads strictly into a fresh module and computes the same.
        fresh = _torch_module(torch, spec)
        fresh.load_state_dict(interop.to_torch(params, spec, tensor=torch.from_numpy))
        for name, g, w in zip(["y", "h_n", "c_n"],
                              _torch_run(torch, fresh, x, lengths, torch_state), want):
            assert rel_err(g, w) <= TOL[kwargs["dtype"]], (name, rel_err(g, w))

        before = module.weight_ih_l0.detach().numpy().copy()
        with torch.no_grad():  # params are a copy, not a view of the module's memory
            module.weight_ih_l0.add_(1.0)
        np.testing.assert_array_equal(params[0][0].w_x.T, before)


@pytest.mark.parametrize("kwargs", [
    dict(cell="lstm", input_size=3, hidden_size=5, num_layers=2, init="chrono",
         chrono_max_len=20),
    dict(cell="gru", input_size=3, hidden_size=4, bidirectional=True, init="torch"),
    dict(cell="lstm", input_size=2, hidden_size=4, bidirectional=True, proj_size=2,
         init="forget_bias"),
])
def test_live_to_torch(kwargs, key):
    torch = pytest.importorskip("torch")
    spec = layers.Spec(**kwargs)
    params = layers.init(key, spec)
    module = _torch_module(torch, spec)
    module.load_state_dict(interop.to_torch(params, spec, tensor=torch.from_numpy))
    x = np.random.default_rng(0).standard_normal((3, 6, spec.input_size)).astype(np.float32)
    for name, g, w in zip(["y", "h_n", "c_n"], _ours(spec, params, x, None, None),
                          _torch_run(torch, module, x, None, None)):
        assert rel_err(g, w) <= TOL["float32"], (name, rel_err(g, w))


def test_live_bfloat16_state_dict():
    torch = pytest.importorskip("torch")
    spec = layers.Spec(cell="gru", input_size=3, hidden_size=4)
    module = _torch_module(torch, spec).to(torch.bfloat16)
    params = interop.from_torch(module.state_dict(), spec)
    assert params[0][0].w_x.dtype == jnp.float32
    np.testing.assert_array_equal(params[0][0].w_x.T, module.weight_ih_l0.detach().float().numpy())


# --- From a PyTorch model in one call (issue 15) --------------------------------------------

def _lm_loss_ours(rnn_source, embed, decoder_w, decoder_b, tokens, bptt, *, prefix="",
                  tensor=None):
    """The word_language_model example's evaluate(), with the RNN run by gated_rnn.

    The RNN is converted in one call; chunks of the time-major [N, B] tokens run through
    layers.apply(time_major=True), the state carried across chunks in PyTorch's own format
    ((h, c) for the LSTM, h for the GRU; torch tensors when `tensor` makes them).
    Returns (mean loss, [loss per chunk], final state).
    """
    spec, params = interop.load_torch(rnn_source, prefix=prefix)
    w, b = jnp.asarray(decoder_w), jnp.asarray(decoder_b)
    state, total, chunk_losses = None, 0.0, []
    for i in range(0, tokens.shape[0] - 1, bptt):
        seq_len = min(bptt, tokens.shape[0] - 1 - i)
        data, targets = tokens[i:i + seq_len], tokens[i + 1:i + 1 + seq_len]
        initial = None if state is None else interop.carry_from_torch(state, spec)
        ys, finals = layers.apply(spec, params, embed(data), initial_carry=initial,
                                  time_major=True)
        state = interop.carry_to_torch(finals, spec, tensor=tensor)
        logits = ys @ w.T + b[None, None]  # [T, B, V]
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, jnp.asarray(targets)[..., None], axis=-1)
        chunk_losses.append(float(nll.mean()))
        total += seq_len * chunk_losses[-1]
    return total / (tokens.shape[0] - 1), chunk_losses, state


def _lm_golden(name):
    with np.load(GOLDEN / f"torch_{name}_float32.npz") as f:
        data = {k: f[k] for k in f.files}
    return data, json.loads(str(data.pop("config")))


@pytest.mark.parametrize("name", LM_CASES)
def test_golden_word_lm_loss_matches_torch_carrying_state_across_chunks(name):
    data, config = _lm_golden(name)
    state_dict = {k[len("param."):]: v for k, v in data.items() if k.startswith("param.")}
    emb = state_dict["encoder.weight"]
    loss, chunk_losses, state = _lm_loss_ours(
        state_dict, lambda tokens: emb[tokens], state_dict["decoder.weight"],
        state_dict["decoder.bias"], data["tokens"], config["bptt"], prefix="rnn.")
    assert len(chunk_losses) == len(data["chunk_loss"]) > 1
    assert rel_err(chunk_losses, data["chunk_loss"]) <= TOL["float32"]
    assert abs(loss - float(data["loss"])) <= TOL["float32"] * float(data["loss"])
    h_n, c_n = state if config["cell"] == "LSTM" else (state, None)
    assert rel_err(h_n, data["h_n"]) <= TOL["float32"]
    if c_n is not None:
        assert rel_err(c_n, data["c_n"]) <= TOL["float32"]


def _make_golden_module():
    """scripts/make_golden.py as a module (it imports torch): its WordLM and lm_evaluate."""
    path = GOLDEN.parents[1] / "scripts" / "make_golden.py"
    module_spec = importlib.util.spec_from_file_location("make_golden", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_live_word_lm_loss_matches_torch_carrying_torch_state_tuples(cell):
    torch = pytest.importorskip("torch")
    golden = _make_golden_module()
    model, tokens = golden.make_lm(cell, vocab=30, emb_size=6, hidden_size=10, num_layers=2,
                                   batch=3, num_tokens=26, seed=5)
    want, want_chunks, want_state = golden.lm_evaluate(model, tokens, bptt=6)
    # model.rnn in one call; the embedding's torch output goes in as it is (time-major).
    loss, chunk_losses, state = _lm_loss_ours(
        model.rnn, lambda tokens: model.encoder(torch.from_numpy(tokens)),
        model.decoder.weight.detach().numpy(),
        model.decoder.bias.detach().numpy(), tokens.numpy(), 6, tensor=torch.from_numpy)
    assert len(chunk_losses) == 5
    assert rel_err(chunk_losses, want_chunks) <= TOL["float32"]
    assert abs(loss - want) <= TOL["float32"] * want
    state, want_state = ((state, want_state) if cell == "LSTM" else ((state,), (want_state,)))
    for got, w in zip(state, want_state):
        assert isinstance(got, torch.Tensor)
        assert rel_err(got.numpy(), w.numpy()) <= TOL["float32"]
    # The torch state from gated_rnn feeds torch's module as its own does.
    y_ours, _ = model.rnn(model.encoder(tokens[:4]), state if cell == "LSTM" else state[0])
    y_torch, _ = model.rnn(model.encoder(tokens[:4]),
                           want_state if cell == "LSTM" else want_state[0])
    assert rel_err(y_ours.detach().numpy(), y_torch.detach().numpy()) <= TOL["float32"]


def _check_like_round_trip(state_dict, spec, params):
    """to_torch(..., like=sd) is sd key for key; a changed bias element alone is re-split."""
    back = interop.to_torch(params, spec, like=state_dict)
    assert list(back) == list(state_dict)
    for k in state_dict:
        np.testing.assert_array_equal(back[k], np.asarray(state_dict[k]), err_msg=k)
    # Without like=, the biases are redistributed: what a checkpoint diff would show.
    plain = interop.to_torch(params, spec)
    assert not np.array_equal(plain["bias_hh_l0"], np.asarray(state_dict["bias_hh_l0"]))
    changed = (params[0], *params[1:])
    changed = ((changed[0][0]._replace(b=changed[0][0].b.at[1].add(0.25)),
                *changed[0][1:]), *changed[1:])
    back = interop.to_torch(changed, spec, like=state_dict)
    old_ih, old_hh = (np.asarray(state_dict[k]) for k in ("bias_ih_l0", "bias_hh_l0"))
    assert back["bias_ih_l0"][1] == np.asarray(changed[0][0].b)[1] and back["bias_hh_l0"][1] == 0
    for k, old in (("bias_ih_l0", old_ih), ("bias_hh_l0", old_hh)):
        np.testing.assert_array_equal(np.delete(back[k], 1), np.delete(old, 1))
    _assert_trees_equal(interop.from_torch(back, spec), changed)


@pytest.mark.parametrize("name", LM_CASES)
def test_golden_to_torch_like_keeps_the_state_dict_key_for_key(name):
    data, _ = _lm_golden(name)
    rnn_sd = {k[len("param.rnn."):]: v for k, v in data.items() if k.startswith("param.rnn.")}
    spec, params = interop.load_torch(rnn_sd)
    _check_like_round_trip(rnn_sd, spec, params)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_live_to_torch_like_keeps_the_state_dict_key_for_key(cell):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = getattr(torch.nn, cell)(3, 5, num_layers=2, bidirectional=True)
    spec, params = interop.load_torch(module)
    _check_like_round_trip(module.state_dict(), spec, params)
    back = interop.to_torch(params, spec, like=module.state_dict(), tensor=torch.from_numpy)
    for k, v in module.state_dict().items():
        assert torch.equal(back[k], v), k
    module.load_state_dict(back, strict=True)


@pytest.mark.parametrize("kwargs", ROUND_TRIP_SPECS + [
    dict(cell="gru", input_size=2, hidden_size=3, dtype="float64")], ids=str)
def test_spec_from_torch_reads_keys_and_shapes(kwargs):
    spec = layers.Spec(**kwargs)
    sd = {k: np.zeros(shape, spec.dtype) for k, shape in interop.expected_keys(spec).items()}
    nonlinearity = "tanh" if spec.cell is layers.CellType.RNN else None
    assert interop.spec_from_torch(sd, nonlinearity=nonlinearity) == spec
    whole = {"encoder.weight": np.zeros((7, 3)), **{f"rnn.{k}": v for k, v in sd.items()}}
    assert interop.spec_from_torch(whole, prefix="rnn.", nonlinearity=nonlinearity) == spec
    no_bias = {k: v for k, v in sd.items() if not k.startswith("bias_")}
    assert interop.spec_from_torch(no_bias, nonlinearity=nonlinearity) == spec


def test_live_spec_from_torch_reads_the_module():
    torch = pytest.importorskip("torch")
    module = torch.nn.LSTM(3, 6, num_layers=3, bidirectional=True, proj_size=2, dropout=0.25,
                           dtype=torch.float64)
    assert interop.spec_from_torch(module) == layers.Spec(
        "LSTM", 3, 6, num_layers=3, bidirectional=True, proj_size=2, dropout=0.25,
        dtype="float64")
    assert interop.spec_from_torch(torch.nn.RNN(2, 4)).cell is layers.CellType.RNN
    assert interop.spec_from_torch(torch.nn.RNN(2, 4, nonlinearity="relu")).nonlinearity \
        is rnn.Nonlinearity.RELU
    # bias=False: zero biases in, no bias keys out (while they stay zero).
    gru_module = torch.nn.GRU(2, 4, bias=False)
    spec, params = interop.load_torch(gru_module)
    assert not np.any(params[0][0].b) and not np.any(params[0][0].b_hn)
    back = interop.to_torch(params, spec, like=gru_module, tensor=torch.from_numpy)
    assert list(back) == ["weight_ih_l0", "weight_hh_l0"]
    gru_module.load_state_dict(back, strict=True)
    trained = ((params[0][0]._replace(b=params[0][0].b + 0.1),),)
    with pytest.raises(ValueError, match=r"no bias keys \(bias=False\), but the biases "
                                         r"\['bias_ih_l0'\] are nonzero"):
        interop.to_torch(trained, spec, like=gru_module)


def test_from_torch_names_the_prefix_of_a_whole_model():
    sd = {"encoder.weight": np.zeros((7, 3)),
          **{f"rnn.{k}": v for k, v in interop.to_torch(_random_params(SPEC), SPEC).items()}}
    hint = (r"the RNN's keys sit under 'rnn\.'.*pass the submodule, model\.rnn or "
            r"model\.rnn\.state_dict\(\), or prefix='rnn\.'")
    with pytest.raises(ValueError, match=r"missing keys \['weight_ih_l0'.*" + hint):
        interop.from_torch(sd, SPEC)
    with pytest.raises(ValueError, match="no weight_ih_l0 / weight_hh_l0.*" + hint):
        interop.spec_from_torch(sd)
    with pytest.raises(ValueError, match=r"no key starts with prefix='lstm\.'.*" + hint):
        interop.from_torch(sd, SPEC, prefix="lstm.")
    _assert_trees_equal(interop.from_torch(sd, SPEC, prefix="rnn."),
                        interop.from_torch({k[4:]: v for k, v in sd.items() if k[:4] == "rnn."},
                                           SPEC))
    back = interop.to_torch(_random_params(SPEC), SPEC, prefix="rnn.", like=sd)
    assert list(back) == [k for k in sd if k.startswith("rnn.")]


def test_spec_from_torch_refusals_say_what_to_do():
    spec = layers.Spec("rnn", 3, 4)
    sd = {k: np.zeros(shape, np.float32) for k, shape in interop.expected_keys(spec).items()}
    with pytest.raises(ValueError, match=r"does not record its nonlinearity.*"
                                         r"nonlinearity='tanh'"):
        interop.spec_from_torch(sd)
    assert interop.spec_from_torch(sd, nonlinearity="relu") == layers.Spec(
        "rnn", 3, 4, nonlinearity="relu")
    with pytest.raises(ValueError, match=r"nonlinearity='tanh' is for an nn.RNN"):
        interop.spec_from_torch(interop.to_torch(_random_params(SPEC), SPEC),
                                nonlinearity="tanh")
    with pytest.raises(ValueError, match=r"weight_hh_l0 \(8, 4\) has 2 gate blocks"):
        interop.spec_from_torch({**sd, "weight_hh_l0": np.zeros((8, 4))})
    with pytest.raises(ValueError, match="state_dict must be a mapping.*or a module"):
        interop.spec_from_torch([("weight_ih_l0", np.zeros((4, 3)))])


def test_carry_from_torch_takes_torch_state_tuples():
    spec = layers.Spec("lstm", 3, 5, num_layers=2)
    rng = np.random.default_rng(0)
    h, c = rng.standard_normal((2, 2, 3, 5)).astype(np.float32)
    by_tuple = interop.carry_from_torch((h, c), spec)
    _assert_trees_equal(by_tuple, interop.carry_from_torch(h, c, spec=spec))
    np.testing.assert_array_equal(by_tuple[1][0].c, c[1])
    gru_spec = layers.Spec("gru", 3, 5, num_layers=2)
    np.testing.assert_array_equal(interop.carry_from_torch(h, gru_spec)[1][0].h, h[1])
    with pytest.raises(ValueError, match=r"cell=lstm needs c.*pass the tuple \(h, c\)"):
        interop.carry_from_torch(h, spec)
    with pytest.raises(ValueError, match="cell=gru takes no c"):
        interop.carry_from_torch((h, c), gru_spec)
    with pytest.raises(ValueError, match="needs the spec"):
        interop.carry_from_torch((h, c))
