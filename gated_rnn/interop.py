"""PyTorch interop: `nn.LSTM` / `nn.GRU` / `nn.RNN` state dicts <-> `layers` params.

NumPy only: torch is never imported. Modules and tensors are accepted by duck typing
(`.state_dict()`; `.detach().cpu().numpy()`, then copied, since `.numpy()` shares memory with
the tensor), and `to_torch` returns NumPy arrays, or whatever `tensor(array)` makes of each:

    spec, params = interop.load_torch(torch_lstm)      # the spec read off the keys and shapes
    params = interop.from_torch(torch_lstm.state_dict(), spec)            # or with your spec
    torch_lstm.load_state_dict(interop.to_torch(params, spec, tensor=torch.from_numpy,
                                                like=torch_lstm.state_dict()))

A whole model's state dict holds the RNN's keys under a prefix ("rnn.weight_ih_l0"): pass the
submodule (`model.rnn`), or `prefix="rnn."`.

PyTorch layouts (key suffix `_l{layer}`, plus `_reverse` for the backward direction; G gates,
P = proj_size or H, the input size of layer k > 0 is P * directions):

    weight_ih_l{k}  [G*H, I]      -> w_x = weight_ih.T                [I, G*H]
    weight_hh_l{k}  [G*H, P]      -> w_h = weight_hh.T                [P, G*H]
    bias_ih_l{k}    [G*H]         -> LSTM, RNN: b = bias_ih + bias_hh [G*H]
    bias_hh_l{k}    [G*H]            GRU: b = [bias_ih + bias_hh for r, z;  bias_ih for n],
                                          b_hn = bias_hh n block      [H]
    weight_hr_l{k}  [P, H]        -> w_hr = weight_hr.T (LSTM with proj_size > 0) [H, P]

The summed biases are one parameter here, so `to_torch` splits them back as `bias_ih = b`,
`bias_hh = 0` (GRU: `bias_hh = [0, 0, b_hn]`): `from_torch(to_torch(p)) == p` exactly, and
`to_torch(from_torch(sd))` computes what `sd` computes (its biases are redistributed). With
`like=sd` it keeps `sd`'s split wherever `bias_ih + bias_hh` still equals `b`, so
`to_torch(from_torch(sd), spec, like=sd)` is `sd` key for key and a checkpoint diff shows only
what changed.

Final states: PyTorch's `h_n` / `c_n` are `[num_layers * directions, B, P or H]` with row
`layer * directions + direction`; `carry_from_torch` / `carry_to_torch` map them to and from
`layers.apply`'s `final_carries[layer][direction]` (and its `initial_carry`).

What has no PyTorch counterpart raises ValueError: a GRU with `gru_variant="reset_before"`, and
the urlstm, mingru and minlstm cells. `nn.RNN(nonlinearity="relu")` is
`Spec(cell="rnn", nonlinearity="relu")` (or `cell="irnn"`, the same cell with identity init). A
state dict does not record the nonlinearity: a ReLU RNN's weights load silently into a tanh
spec and compute something else, so the spec must say it; `spec_from_torch` reads it off a
module's `mode` and asks for `nonlinearity="tanh"` or `"relu"` with a bare `nn.RNN` state dict.
A `bias=False` module has no bias keys: `load_torch` gives it zero biases (which then train like
any other parameter), and `to_torch(..., like=sd)` leaves them out again while they are zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import checks, layers


def _check_spec(spec: layers.Spec, fn: str) -> None:
    if not isinstance(spec, layers.Spec):
        raise ValueError(f"interop.{fn}: spec must be a layers.Spec, got {type(spec).__name__}")
    if spec.cell_fns.TORCH_NAME is None:
        raise ValueError(
            f"interop.{fn}: cell={spec.cell.value!r}"
            + (f" with gru_variant={spec.gru_variant.value!r}" if spec.cell.value == "gru" else "")
            + " has no PyTorch counterpart (nn.RNN, nn.LSTM and nn.GRU compute our rnn / irnn, "
            "lstm and reset-after gru: n = tanh(W_n x + b_in + r * (U_n h + b_hn)))")
    if spec.dtype.kind != "f":
        raise ValueError(f"interop.{fn}: spec.dtype must be floating, got {spec.dtype.name}")


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def _torch_shapes(spec: layers.Spec, layer: int, direction: int) -> dict[str, tuple]:
    """PyTorch's key -> (shape, layout) for one direction of one layer, in PyTorch's order."""
    num_gates = spec.cell_fns.NUM_GATES
    gh = num_gates * spec.hidden_size
    h, p, i = spec.hidden_size, spec.proj_size or spec.hidden_size, spec.layer_input_size(layer)
    g = "" if num_gates == 1 else str(num_gates)
    in_name = "I" if layer == 0 else ("P" if spec.proj_size else "H") + " * directions"
    s = _suffix(layer, direction)
    shapes = {f"weight_ih{s}": ((gh, i), f"[{g}H, {in_name}]"),
              f"weight_hh{s}": ((gh, p), f"[{g}H, {'P' if spec.proj_size else 'H'}]"),
              f"bias_ih{s}": ((gh,), f"[{g}H]"),
              f"bias_hh{s}": ((gh,), f"[{g}H]")}
    if spec.proj_size:
        shapes[f"weight_hr{s}"] = ((p, h), "[P, H]")
    return shapes


def expected_keys(spec: layers.Spec) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of the PyTorch module that `spec` describes, in order."""
    _check_spec(spec, "expected_keys")
    return {k: shape for l in range(spec.num_layers) for d in range(spec.num_directions)
            for k, (shape, _) in _torch_shapes(spec, l, d).items()}


def _sizes(spec: layers.Spec) -> str:
    return (f"H={spec.hidden_size}, I={spec.input_size}"
            + (f", P={spec.proj_size}" if spec.proj_size else "")
            + f", directions={spec.num_directions}")


def _to_numpy(value: Any, dtype: np.dtype, what: str) -> np.ndarray:
    """A fresh NumPy array of `dtype` from a tensor (duck-typed) or an array."""
    array = np.asarray(checks.from_tensor(value))
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{what}: expected a floating array, got dtype {array.dtype.name} "
                         f"with shape {array.shape}")
    # Copy: a tensor's .numpy() shares its memory, so in-place updates of the torch module
    # (an optimizer step) would otherwise leak into these params.
    return np.array(array, dtype=dtype, copy=True)


def _to_jax(array: np.ndarray, dtype: np.dtype, fn: str) -> jax.Array:
    out = jnp.asarray(array)
    if out.dtype != dtype:
        raise ValueError(f"interop.{fn}: spec.dtype={dtype.name} needs jax_enable_x64 (JAX made "
                         f"{out.dtype.name}); enable it, e.g. `with jax.enable_x64():`")
    return out


def _state_dict(obj: Any, prefix: str, fn: str) -> dict:
    """The RNN's entries of a module or state dict: the keys under `prefix`, with it removed."""
    if not isinstance(obj, Mapping):
        if not callable(getattr(obj, "state_dict", None)):
            raise ValueError(f"interop.{fn}: state_dict must be a mapping of PyTorch keys "
                             f"(weight_ih_l0, ...) to tensors or arrays, or a module with "
                             f".state_dict(); got {type(obj).__name__}")
        obj = obj.state_dict()
    if not prefix:
        return dict(obj)
    found = {k[len(prefix):]: v for k, v in obj.items()
             if isinstance(k, str) and k.startswith(prefix)}
    if not found:
        raise ValueError(f"interop.{fn}: no key starts with prefix={prefix!r}; the keys are "
                         f"{list(obj)[:12]}{' ...' if len(obj) > 12 else ''}"
                         + _prefix_hint(obj))
    return found


def _prefix_hint(keys) -> str:
    """How to pick the RNN out of a whole model's state dict, if that is what `keys` looks like."""
    prefixes = sorted({k[:-len("weight_ih_l0")] for k in keys if isinstance(k, str)
                       and k.endswith(".weight_ih_l0")})
    if len(prefixes) == 1:
        p = prefixes[0]
        return (f" (the RNN's keys sit under {p!r}, as in a whole model's state dict: pass the "
                f"submodule, model.{p[:-1]} or model.{p[:-1]}.state_dict(), or prefix={p!r})")
    if prefixes:
        return (f" (RNN keys sit under several prefixes {prefixes}: pass one RNN submodule, or "
                f"prefix= one of them)")
    return ""


_KEY = re.compile(r"(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)_l(\d+)(_reverse)?")
_NUM_GATES = {4: layers.CellType.LSTM, 3: layers.CellType.GRU, 1: layers.CellType.RNN}


def _dtype_of(value: Any) -> np.dtype:
    """The dtype of a tensor (duck-typed) or array, as NumPy / JAX name it."""
    if hasattr(value, "detach"):  # torch.float32 -> float32; bfloat16 is jnp.bfloat16
        return jnp.dtype(str(value.dtype).removeprefix("torch."))
    return np.asarray(value).dtype


def spec_from_torch(module_or_state_dict: Any, *, prefix: str = "",
                    nonlinearity: Optional[str] = None, dtype: Any = None) -> layers.Spec:
    """The `layers.Spec` of a PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN`, read off its keys and shapes.

    Read: the cell (gate count: 4 LSTM, 3 GRU, 1 RNN), input_size, hidden_size, num_layers,
    bidirectional, proj_size and dtype; from a module also its mode (so the RNN's nonlinearity)
    and dropout. A bias=False module has the same spec (see `load_torch`). Not read: the
    layout; a module with `batch_first=False` (PyTorch's default) takes [T, B, I] inputs, so
    run it with `layers.apply(..., time_major=True)`.

    Args:
      module_or_state_dict: the module, or its `state_dict()` (or a mapping of the same keys to
        arrays).
      prefix: the RNN's key prefix in a whole model's state dict (e.g. "rnn."); "" for none.
      nonlinearity: for an `nn.RNN`'s bare state dict, which does not record it: "tanh" or
        "relu". Not needed for a module (its `mode` says it) or an LSTM / GRU.
      dtype: the params' dtype; None takes the weights' dtype.

    Raises:
      ValueError: if the keys are not an RNN's (naming a prefix to pass, if one fits), the
        shapes disagree, or a bare `nn.RNN` state dict comes without `nonlinearity`.
    """
    fn = "spec_from_torch"
    module = None if isinstance(module_or_state_dict, Mapping) else module_or_state_dict
    sd = _state_dict(module_or_state_dict, prefix, fn)
    if "weight_ih_l0" not in sd or "weight_hh_l0" not in sd:
        raise ValueError(f"interop.{fn}: not an nn.LSTM / nn.GRU / nn.RNN state dict: no "
                         f"weight_ih_l0 / weight_hh_l0 among the keys "
                         f"{list(sd)[:12]}{' ...' if len(sd) > 12 else ''}" + _prefix_hint(sd))
    layer_ids = [int(m.group(2)) for m in map(_KEY.fullmatch, sd) if m]
    w_ih, w_hh = tuple(np.shape(sd["weight_ih_l0"])), tuple(np.shape(sd["weight_hh_l0"]))
    proj = tuple(np.shape(sd["weight_hr_l0"])) if "weight_hr_l0" in sd else None
    hidden = proj[1] if proj else w_hh[1]
    if len(w_ih) != 2 or len(w_hh) != 2 or hidden < 1 or w_hh[0] % hidden:
        raise ValueError(f"interop.{fn}: weight_ih_l0 {w_ih} and weight_hh_l0 {w_hh}"
                         + (f" with weight_hr_l0 {proj}" if proj else "")
                         + " are not [G*H, I] and [G*H, P or H] (G gates: 4 LSTM, 3 GRU, 1 RNN)")
    gates = w_hh[0] // hidden
    if gates not in _NUM_GATES:
        raise ValueError(f"interop.{fn}: weight_hh_l0 {w_hh} has {gates} gate blocks of "
                         f"H={hidden}; expected 4 (LSTM), 3 (GRU) or 1 (RNN)")
    cell = _NUM_GATES[gates]
    mode = getattr(module, "mode", None)
    if mode is not None:  # nn.LSTM / nn.GRU / nn.RNN: "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
        from_mode = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}.get(mode)
        if checks.enum_value(layers.CellType, "rnn" if from_mode else mode, "mode") is not cell:
            raise ValueError(f"interop.{fn}: the module's mode {mode!r} disagrees with its "
                             f"weights ({gates} gate blocks)")
        if nonlinearity is not None and nonlinearity != from_mode:
            raise ValueError(f"interop.{fn}: nonlinearity={nonlinearity!r} disagrees with the "
                             f"module's mode {mode!r}")
        nonlinearity = from_mode
    elif cell is layers.CellType.RNN and nonlinearity not in ("tanh", "relu"):
        raise ValueError(
            f"interop.{fn}: a 1-gate (nn.RNN) state dict does not record its nonlinearity "
            f"(tanh or relu; got nonlinearity={nonlinearity!r}): pass the module, or "
            f"nonlinearity='tanh' (PyTorch's default) or 'relu'")
    elif cell is not layers.CellType.RNN and nonlinearity is not None:
        raise ValueError(f"interop.{fn}: nonlinearity={nonlinearity!r} is for an nn.RNN; these "
                         f"weights are a {cell.value}'s ({gates} gate blocks)")
    extra = {"nonlinearity": nonlinearity} if cell is layers.CellType.RNN else {}
    return layers.Spec(cell=cell, input_size=w_ih[1], hidden_size=hidden,
                       num_layers=max(layer_ids) + 1,
                       bidirectional="weight_ih_l0_reverse" in sd,
                       dropout=float(getattr(module, "dropout", 0.0) or 0.0),
                       proj_size=proj[0] if proj else 0, **extra,
                       dtype=_dtype_of(sd["weight_ih_l0"]) if dtype is None else dtype)


def load_torch(module_or_state_dict: Any, *, prefix: str = "",
               nonlinearity: Optional[str] = None, dtype: Any = None) -> tuple:
    """A PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` in one call: `spec_from_torch`, then `from_torch`.

        spec, params = interop.load_torch(model.rnn)
        ys, finals = layers.apply(spec, params, xs, time_major=True)  # batch_first=False

    A bias=False module gets zero biases (they train like any other parameter here; to_torch
    with `like=` leaves them out again while they stay zero).

    Args:
      module_or_state_dict, prefix, nonlinearity, dtype: as in `spec_from_torch`.

    Returns:
      (spec, params): the `layers.Spec` and params[layer][direction] for `layers.apply`.
    """
    spec = spec_from_torch(module_or_state_dict, prefix=prefix, nonlinearity=nonlinearity,
                           dtype=dtype)
    sd = _state_dict(module_or_state_dict, prefix, "load_torch")
    if not any(k.startswith("bias_") for k in sd):  # bias=False
        sd.update({k: np.zeros(shape, spec.dtype) for k, shape in expected_keys(spec).items()
                   if k.startswith("bias_")})
    return spec, from_torch(sd, spec)


def from_torch(state_dict: Mapping[str, Any], spec: layers.Spec, *, prefix: str = "") -> tuple:
    """Converts a PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` state dict to `layers` params.

    Args:
      state_dict: `module.state_dict()` (tensors), a mapping of the same keys to arrays, or the
        module itself.
      spec: the stack it describes (cell, sizes, num_layers, bidirectional, proj_size), e.g.
        from `spec_from_torch` (`load_torch` does both). The params get `spec.dtype`.
      prefix: the RNN's key prefix in a whole model's state dict (e.g. "rnn."); other keys are
        then ignored.

    Returns:
      params for `layers.apply(spec, params, xs)`: params[layer][direction] a cell Params.

    Raises:
      ValueError: on missing or unexpected keys, a wrong shape (naming the key, the expected
        and the received shape), non-floating values, or a spec PyTorch cannot hold.
    """
    _check_spec(spec, "from_torch")
    state_dict = _state_dict(state_dict, prefix, "from_torch")
    want = expected_keys(spec)
    missing = [k for k in want if k not in state_dict]
    unexpected = sorted((k for k in state_dict if k not in want), key=str)
    if missing or unexpected:
        raise ValueError(
            f"interop.from_torch: state dict does not match spec (cell={spec.cell.value}, "
            f"num_layers={spec.num_layers}, bidirectional={spec.bidirectional}, "
            f"proj_size={spec.proj_size}): missing keys {missing}, unexpected keys {unexpected}"
            + (_prefix_hint(state_dict) if "weight_ih_l0" not in state_dict else
               " (a bias=False module has no bias keys: add zero biases, or use "
               "interop.load_torch, which does)"
               if not any(str(k).startswith("bias_") for k in state_dict) else ""))
    return tuple(tuple(_from_torch_one(state_dict, spec, l, d)
                       for d in range(spec.num_directions))
                 for l in range(spec.num_layers))


def _gate(spec: layers.Spec, gate: int) -> slice:
    """The columns of gate block `gate` in a `[G*H]` bias."""
    return slice(gate * spec.hidden_size, (gate + 1) * spec.hidden_size)


def _from_torch_one(state_dict: Mapping[str, Any], spec: layers.Spec, layer: int,
                    direction: int) -> Any:
    """The cell Params of one layer and direction of a (checked) state dict."""
    arrays = {}
    for k, (shape, layout) in _torch_shapes(spec, layer, direction).items():
        a = _to_numpy(state_dict[k], spec.dtype, f"interop.from_torch {k}")
        if a.shape != shape:
            raise ValueError(f"interop.from_torch: {k}: expected shape {shape} "
                             f"{layout} with {_sizes(spec)}, got {a.shape}")
        arrays[k[:k.index("_l")]] = a
    fields = dict(w_x=arrays["weight_ih"].T, w_h=arrays["weight_hh"].T,
                  b=arrays["bias_ih"] + arrays["bias_hh"])
    for name, gate in spec.cell_fns.TORCH_HH_BIASES:
        # This block of bias_hh stays apart (the GRU's b_hn sits inside r * (U_n h + b_hn)).
        fields["b"][_gate(spec, gate)] = arrays["bias_ih"][_gate(spec, gate)]
        fields[name] = arrays["bias_hh"][_gate(spec, gate)]
    if spec.proj_size:
        fields["w_hr"] = arrays["weight_hr"].T
    return spec.cell_fns.Params(**{k: _to_jax(np.ascontiguousarray(v), spec.dtype, "from_torch")
                                   for k, v in fields.items()})


def _param_shapes(spec: layers.Spec, layer: int) -> dict[str, Optional[tuple]]:
    """Field -> shape of one direction's cell Params (None: the field is None)."""
    shapes = jax.eval_shape(lambda key: layers.init_cell(key, spec, layer), jax.random.key(0))
    return {name: None if a is None else a.shape for name, a in shapes._asdict().items()}


def _check_params(params: Any, spec: layers.Spec) -> None:
    """ValueError unless params are layers.init(key, spec)'s structure and shapes."""
    ok = (isinstance(params, (tuple, list)) and len(params) == spec.num_layers
          and all(isinstance(l, (tuple, list)) and len(l) == spec.num_directions for l in params))
    if not ok:
        got = ([len(l) if isinstance(l, (tuple, list)) else type(l).__name__ for l in params]
               if isinstance(params, (tuple, list)) else type(params).__name__)
        raise ValueError(f"interop.to_torch: params must hold num_layers={spec.num_layers} "
                         f"layers of {spec.num_directions} direction(s); got {got}")
    kind = spec.cell_fns.Params
    for l, layer in enumerate(params):
        shapes = _param_shapes(spec, l)
        for d, p in enumerate(layer):
            if not isinstance(p, kind):
                raise ValueError(f"interop.to_torch: params[{l}][{d}] must be "
                                 f"{kind.__module__}.Params for cell={spec.cell.value}, got "
                                 f"{type(p).__module__}.{type(p).__name__}")
            for name in kind._fields:
                a, e = getattr(p, name), shapes[name]
                if (a is None) != (e is None) or (e is not None and np.shape(a) != e):
                    raise ValueError(
                        f"interop.to_torch: params[{l}][{d}].{name}: expected shape {e} with "
                        f"{_sizes(spec)}, got {None if a is None else np.shape(a)}")


def to_torch(params: tuple, spec: layers.Spec, *,
             tensor: Optional[Callable[[np.ndarray], Any]] = None,
             like: Any = None, prefix: str = "") -> dict:
    """Converts `layers` params to a PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` state dict.

    Summed biases are split as `bias_ih = b`, `bias_hh = 0` (GRU: `bias_hh = [0, 0, b_hn]`),
    unless `like` gives the split to keep.

    Args:
      params: params[layer][direction] cell Params, as from `layers.init(key, spec)`.
      spec: the stack; the values get `spec.dtype`.
      tensor: applied to each value, e.g. `torch.from_numpy`; None keeps NumPy arrays.
      like: None, or the state dict (or module) the params came from: each bias element keeps
        its `bias_ih` / `bias_hh` split there wherever their sum still equals `b` (elements
        that changed are split as above), so `to_torch(from_torch(sd, spec), spec, like=sd)`
        equals `sd` key for key. A bias=False `like` (no bias keys) gets no bias keys while
        the biases are zero. `from_torch` of the result is `params` exactly, either way.
      prefix: prepended to every key (and where `like` is read), e.g. "rnn." for a submodule
        in a whole model's state dict (load it with `strict=False`).

    Returns:
      {key: value} with PyTorch's keys in its order, ready for `module.load_state_dict`.

    Raises:
      ValueError: if params do not match `spec`, `spec` has no PyTorch counterpart, or `like`
        has other keys or shapes (or no bias keys while a bias is nonzero).
    """
    _check_spec(spec, "to_torch")
    _check_params(params, spec)
    dtype = spec.dtype
    out = {}
    for l in range(spec.num_layers):
        for d in range(spec.num_directions):
            p = params[l][d]
            b = _to_numpy(p.b, dtype, f"params[{l}][{d}].b")
            bias_hh = np.zeros_like(b)
            for name, gate in spec.cell_fns.TORCH_HH_BIASES:
                bias_hh[_gate(spec, gate)] = _to_numpy(getattr(p, name), dtype,
                                                       f"params[{l}][{d}].{name}")
            s = _suffix(l, d)
            out[f"weight_ih{s}"] = _to_numpy(p.w_x, dtype, f"params[{l}][{d}].w_x").T
            out[f"weight_hh{s}"] = _to_numpy(p.w_h, dtype, f"params[{l}][{d}].w_h").T
            out[f"bias_ih{s}"] = b
            out[f"bias_hh{s}"] = bias_hh
            if spec.proj_size:
                out[f"weight_hr{s}"] = _to_numpy(p.w_hr, dtype, f"params[{l}][{d}].w_hr").T
    if like is not None:
        out = _split_like(out, _state_dict(like, prefix, "to_torch"), spec)
    out = {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}
    return out if tensor is None else {k: tensor(v) for k, v in out.items()}


def _split_like(out: dict, like: dict, spec: layers.Spec) -> dict:
    """`out` (to_torch's default bias split) with `like`'s split wherever its sum is unchanged."""
    biases = [k for k in out if k.startswith("bias_")]
    weights = [k for k in out if k not in biases]
    missing = [k for k in weights if k not in like]
    unexpected = [k for k in like if k not in out]
    present = [k for k in biases if k in like]
    if missing or unexpected or present not in ([], biases):
        if present:
            missing += [k for k in biases if k not in like]
        raise ValueError(f"interop.to_torch: like= must have the keys of this spec's module "
                         f"(with all bias keys or none): missing {missing}, unexpected "
                         f"{unexpected}")
    out = dict(out)
    if not present:  # a bias=False module
        nonzero = [k for k in biases if np.any(out[k])]
        if nonzero:
            raise ValueError(f"interop.to_torch: like= has no bias keys (bias=False), but the "
                             f"biases {nonzero} are nonzero: such a module cannot hold them")
        for k in biases:
            del out[k]
        return out
    # The blocks summed into b (all but the cell's TORCH_HH_BIASES, which are kept apart).
    summed = np.ones(spec.cell_fns.NUM_GATES * spec.hidden_size, bool)
    for _, gate in spec.cell_fns.TORCH_HH_BIASES:
        summed[_gate(spec, gate)] = False
    for k_ih in (k for k in biases if k.startswith("bias_ih")):
        k_hh = k_ih.replace("bias_ih", "bias_hh")
        old_ih = _to_numpy(like[k_ih], spec.dtype, f"interop.to_torch like {k_ih}")
        old_hh = _to_numpy(like[k_hh], spec.dtype, f"interop.to_torch like {k_hh}")
        for k, a in ((k_ih, old_ih), (k_hh, old_hh)):
            if a.shape != out[k].shape:
                raise ValueError(f"interop.to_torch: like {k}: expected shape {out[k].shape} "
                                 f"with {_sizes(spec)}, got {a.shape}")
        # The same sum, in the same dtype, as from_torch's: keeping these elements keeps
        # from_torch(to_torch(params)) == params exactly.
        keep = summed & (old_ih + old_hh == out[k_ih])
        out[k_ih] = np.where(keep, old_ih, out[k_ih])
        out[k_hh] = np.where(keep, old_hh, out[k_hh])
    return out


def carry_from_torch(h: Any, c: Any = None, *, spec: Optional[layers.Spec] = None) -> tuple:
    """PyTorch's (h_0, c_0) or h_0 -> `layers.apply`'s `initial_carry` (or final carries).

    `carry_from_torch(state, spec)` takes the state as PyTorch returns it: the `(h_n, c_n)`
    tuple of `nn.LSTM`, or `h_n` of `nn.GRU` / `nn.RNN`. `carry_from_torch(h, c, spec=spec)`
    works too.

    Args:
      h: [num_layers * directions, B, P or H] tensor or array; row `layer * directions + d`.
        Or the tuple (h, c).
      c: [num_layers * directions, B, H] for an LSTM; None otherwise. Or the spec.
      spec: the stack.

    Returns:
      carries[layer][direction]: `lstm.Carry(h, c)`, or `gru.Carry(h)` / `rnn.Carry(h)`.
    """
    if isinstance(c, layers.Spec):  # carry_from_torch(state, spec)
        if spec is not None:
            raise ValueError("interop.carry_from_torch: spec given twice")
        spec, c = c, None
    if spec is None:
        raise ValueError("interop.carry_from_torch: needs the spec: "
                         "carry_from_torch(state, spec) or carry_from_torch(h, c, spec=spec)")
    _check_spec(spec, "carry_from_torch")
    if isinstance(h, tuple):  # PyTorch's (h, c)
        if c is not None or len(h) != 2:
            raise ValueError(f"interop.carry_from_torch: expected the tuple (h, c) as nn.LSTM "
                             f"returns it, or h and c; got a tuple of {len(h)}"
                             + (" and c" if c is not None else ""))
        h, c = h
    carry_type = spec.cell_fns.Carry
    has_c = "c" in carry_type._fields  # the LSTM's cell state
    if has_c == (c is None):
        raise ValueError(f"interop.carry_from_torch: cell={spec.cell.value} "
                         + ("needs c (c_0 / c_n): pass the tuple (h, c) as nn.LSTM returns it"
                            if has_c else "takes no c (its state is h alone)"))
    rows = spec.num_layers * spec.num_directions
    states = {"h": (h, spec.proj_size or spec.hidden_size)}
    if has_c:
        states["c"] = (c, spec.hidden_size)
    arrays = {}
    for name, (value, size) in states.items():
        a = _to_numpy(value, spec.dtype, f"interop.carry_from_torch {name}")
        if a.ndim != 3 or a.shape[0] != rows or a.shape[2] != size:
            raise ValueError(f"interop.carry_from_torch: {name}: expected shape "
                             f"({rows}, B, {size}) [num_layers * directions, B, "
                             f"{'P' if name == 'h' and spec.proj_size else 'H'}], got {a.shape}")
        arrays[name] = a
    if has_c and arrays["h"].shape[1] != arrays["c"].shape[1]:
        raise ValueError(f"interop.carry_from_torch: h and c batch sizes differ: "
                         f"{arrays['h'].shape} vs {arrays['c'].shape}")
    return tuple(
        tuple(carry_type(**{n: _to_jax(a[l * spec.num_directions + d], spec.dtype,
                                       "carry_from_torch")
                            for n, a in arrays.items()})
              for d in range(spec.num_directions))
        for l in range(spec.num_layers))


def carry_to_torch(carries: tuple, spec: layers.Spec, *,
                   tensor: Optional[Callable[[np.ndarray], Any]] = None) -> Any:
    """`layers.apply`'s final carries -> PyTorch's `(h_n, c_n)` (LSTM) or `h_n`.

    Args:
      carries: carries[layer][direction] with fields [B, P or H].
      spec: the stack.
      tensor: applied to each array, e.g. `torch.from_numpy`; None keeps NumPy arrays.

    Returns:
      h_n [num_layers * directions, B, P or H] (and c_n [num_layers * directions, B, H]).
    """
    _check_spec(spec, "carry_to_torch")
    ok = (isinstance(carries, (tuple, list)) and len(carries) == spec.num_layers
          and all(isinstance(l, (tuple, list)) and len(l) == spec.num_directions
                  for l in carries))
    if not ok:
        raise ValueError(f"interop.carry_to_torch: carries must hold num_layers="
                         f"{spec.num_layers} layers of {spec.num_directions} direction(s)")
    names = spec.cell_fns.Carry._fields  # PyTorch's h_n, then c_n for the LSTM
    out = []
    for name in names:
        rows = [_to_numpy(getattr(carry, name), spec.dtype, f"carries[{l}][{d}].{name}")
                for l, layer in enumerate(carries) for d, carry in enumerate(layer)]
        if len({r.shape for r in rows}) != 1:
            raise ValueError(f"interop.carry_to_torch: {name} shapes differ across layers: "
                             f"{[r.shape for r in rows]}")
        stacked = np.stack(rows)
        out.append(stacked if tensor is None else tensor(stacked))
    return tuple(out) if len(out) == 2 else out[0]
