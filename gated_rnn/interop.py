"""PyTorch interop: `nn.LSTM` / `nn.GRU` / `nn.RNN` state dicts <-> `layers` params.

NumPy only: torch is never imported. Tensors are accepted by duck typing
(`.detach().cpu().numpy()`, then copied, since `.numpy()` shares memory with the tensor), and
`to_torch` returns NumPy arrays, or whatever `tensor(array)` makes of each:

    params = interop.from_torch(torch_lstm.state_dict(), spec)
    torch_lstm.load_state_dict(interop.to_torch(params, spec, tensor=torch.from_numpy))

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
`to_torch(from_torch(sd))` computes what `sd` computes (its biases are redistributed).

Final states: PyTorch's `h_n` / `c_n` are `[num_layers * directions, B, P or H]` with row
`layer * directions + direction`; `carry_from_torch` / `carry_to_torch` map them to and from
`layers.apply`'s `final_carries[layer][direction]` (and its `initial_carry`).

What has no PyTorch counterpart raises ValueError: a GRU with `gru_variant="reset_before"`.
`nn.RNN` must use `nonlinearity="tanh"` (its default); a state dict does not record it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import layers


def _check_spec(spec: layers.Spec, fn: str) -> None:
    if not isinstance(spec, layers.Spec):
        raise ValueError(f"interop.{fn}: spec must be a layers.Spec, got {type(spec).__name__}")
    if spec.cell_fns.TORCH_NAME is None:
        raise ValueError(
            f"interop.{fn}: cell={spec.cell.value!r} with gru_variant={spec.gru_variant.value!r} "
            f"has no PyTorch counterpart (nn.RNN, nn.LSTM and nn.GRU compute our rnn, lstm and "
            f"reset-after gru: n = tanh(W_n x + b_in + r * (U_n h + b_hn)))")
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
    if hasattr(value, "detach"):  # a torch.Tensor; never import torch
        value = value.detach().cpu()
        try:
            value = value.numpy()
        except TypeError:  # bfloat16 has no NumPy dtype; float32 holds it exactly
            value = value.float().numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f":
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


def from_torch(state_dict: Mapping[str, Any], spec: layers.Spec) -> tuple:
    """Converts a PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` state dict to `layers` params.

    Args:
      state_dict: `module.state_dict()` (tensors) or a mapping of the same keys to arrays.
      spec: the stack it describes (cell, sizes, num_layers, bidirectional, proj_size).
        The params get `spec.dtype`.

    Returns:
      params for `layers.apply(spec, params, xs)`: params[layer][direction] a cell Params.

    Raises:
      ValueError: on missing or unexpected keys, a wrong shape (naming the key, the expected
        and the received shape), non-floating values, or a spec PyTorch cannot hold.
    """
    _check_spec(spec, "from_torch")
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"interop.from_torch: state_dict must be a mapping of PyTorch keys "
                         f"(weight_ih_l0, ...) to tensors or arrays, got "
                         f"{type(state_dict).__name__}")
    want = expected_keys(spec)
    missing = [k for k in want if k not in state_dict]
    unexpected = sorted((k for k in state_dict if k not in want), key=str)
    if missing or unexpected:
        raise ValueError(
            f"interop.from_torch: state dict does not match spec (cell={spec.cell.value}, "
            f"num_layers={spec.num_layers}, bidirectional={spec.bidirectional}, "
            f"proj_size={spec.proj_size}): missing keys {missing}, unexpected keys {unexpected}"
            + (" (a bias=False module has no bias keys: add zero biases)"
               if not any(k.startswith("bias_") for k in state_dict) else ""))
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
             tensor: Optional[Callable[[np.ndarray], Any]] = None) -> dict:
    """Converts `layers` params to a PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` state dict.

    Summed biases are split as `bias_ih = b`, `bias_hh = 0` (GRU: `bias_hh = [0, 0, b_hn]`).

    Args:
      params: params[layer][direction] cell Params, as from `layers.init(key, spec)`.
      spec: the stack; the values get `spec.dtype`.
      tensor: applied to each value, e.g. `torch.from_numpy`; None keeps NumPy arrays.

    Returns:
      {key: value} with PyTorch's keys in its order, ready for `module.load_state_dict`.

    Raises:
      ValueError: if params do not match `spec`, or `spec` has no PyTorch counterpart.
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
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    return out if tensor is None else {k: tensor(v) for k, v in out.items()}


def carry_from_torch(h: Any, c: Any = None, *, spec: layers.Spec) -> tuple:
    """PyTorch's (h_0, c_0) or h_0 -> `layers.apply`'s `initial_carry` (or final carries).

    Args:
      h: [num_layers * directions, B, P or H] tensor or array; row `layer * directions + d`.
      c: [num_layers * directions, B, H] for an LSTM; None otherwise.
      spec: the stack.

    Returns:
      carries[layer][direction]: `lstm.Carry(h, c)`, or `gru.Carry(h)` / `rnn.Carry(h)`.
    """
    _check_spec(spec, "carry_from_torch")
    carry_type = spec.cell_fns.Carry
    has_c = "c" in carry_type._fields  # the LSTM's cell state
    if has_c == (c is None):
        raise ValueError(f"interop.carry_from_torch: cell={spec.cell.value} "
                         + ("needs c (c_0 / c_n)" if has_c else "takes no c"))
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
