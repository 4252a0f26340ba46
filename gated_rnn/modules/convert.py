"""Functional params <-> the Flax modules' param trees, shared by `linen` and `nnx`.

Params are stored under the field names of the cell's `Params` (w_x, w_h, b, b_hn, w_hr), a
stack's per layer and direction ("layer0_fwd", "layer0_bwd", ...), so a checkpoint reads like the
functional params, and `to_flax` / `from_flax` convert between the two without copying.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gated_rnn import checks, gru, initializers, layers, lstm, rnn

_DIRECTIONS = ("fwd", "bwd")


def layer_name(layer: int, direction: int) -> str:
    """A stack's entry for one layer and direction: "layer0_fwd", "layer0_bwd", ..."""
    return f"layer{layer}_{_DIRECTIONS[direction]}"


def to_flax(params: Any) -> dict:
    """Functional params -> the modules' param tree (the arrays themselves, not copies).

    Args:
      params: a cell's Params (-> `{"w_x": ..., "w_h": ..., "b": ...}`, None fields dropped),
        or stack params from `layers.init` (-> `{"layer0_fwd": {...}, "layer0_bwd": {...}, ...}`).

    Returns:
      The dict to use as `{"params": to_flax(p)}` in a linen `apply`, or with `nnx.update`.
    """
    if hasattr(params, "_fields"):
        return {name: value for name, value in params._asdict().items() if value is not None}
    return {layer_name(l, d): to_flax(p) for l, layer in enumerate(params)
            for d, p in enumerate(layer)}


def from_flax(tree: Mapping, spec: layers.Spec) -> Any:
    """The inverse of `to_flax`: a module's param tree -> functional params for `spec`.

    Args:
      tree: a cell's params (`{"w_x", "w_h", "b", ...}`) or a stack's (`{"layer0_fwd": ...}`),
        e.g. `variables["params"]` of a linen module or `nnx.state(model, nnx.Param)`.
      spec: the stack (for a cell: its one-layer spec, e.g. `cell.spec(input_size)`).

    Returns:
      The cell's Params for a cell's tree, else `layers.init`-shaped params (tuple per layer of
      tuple per direction of Params).
    """
    params_type = spec.cell_fns.Params

    def unpack(fields: Mapping) -> Any:
        fields = {name: value.get_value() if isinstance(value, nnx.Variable) else value
                  for name, value in fields.items()}
        unknown = set(fields) - set(params_type._fields)
        if unknown:
            raise ValueError(f"from_flax: fields {sorted(unknown)} are not in "
                             f"{spec.cell.value} Params {params_type._fields}")
        return params_type(**fields)

    if "w_x" in tree:
        return unpack(tree)
    expected = {layer_name(l, d) for l in range(spec.num_layers)
                for d in range(spec.num_directions)}
    if set(tree) != expected:
        raise ValueError(f"from_flax: expected entries {sorted(expected)} for num_layers="
                         f"{spec.num_layers}, bidirectional={spec.bidirectional}; got "
                         f"{sorted(tree)}")
    return tuple(tuple(unpack(tree[layer_name(l, d)]) for d in range(spec.num_directions))
                 for l in range(spec.num_layers))


def check_cell_carry(spec: layers.Spec, params: Any, carry: Any, x: jax.Array) -> None:
    """Raises ValueError unless `carry` is the Carry a Flax cell of `spec` takes for input x."""
    expected = jax.eval_shape(lambda: spec.cell_fns.zero_carry(params, x.shape[:-1]))
    checks.check_carry(carry, expected, what=f"{spec.cell.value} cell carry")


# --- The Flax boundary: carries, initializers, dtypes (shared by the linen and NNX cells) ----

def to_flax_carry(carry: Any) -> Any:
    """A cell's Carry -> Flax's carry structure: the bare array h for a one-field Carry (Flax's
    GRU and simple cells), the tuple (c, h) for `lstm.Carry(h, c)` (Flax's LSTM order)."""
    fields = type(carry)._fields
    if fields == ("h",):
        return carry.h
    if fields == ("h", "c"):
        return (carry.c, carry.h)
    return carry


def from_flax_carry(carry: Any, expected: Any, *, what: str, hidden_size: int) -> Any:
    """Flax's carry structure -> the cell's Carry, checked against `expected` (shapes).

    Raises ValueError in Flax's terms: the structure Flax's cell takes, how our functional Carry
    differs, and `hidden_size` (Flax: `features`) for a carry of the wrong width.
    """
    carry_type = type(expected)
    fields = carry_type._fields
    got = _describe(carry)
    if fields == ("h",):
        if isinstance(carry, (tuple, list, dict)) or not hasattr(carry, "shape"):
            hint = "; pass carry.h" if isinstance(carry, carry_type) else ""
            raise ValueError(f"{what}: expected Flax's carry, a bare [..., H] array (as "
                             f"initialize_carry returns); got {got}{hint}")
        core = carry_type(h=carry)
    elif fields == ("h", "c"):
        if (isinstance(carry, carry_type) or not isinstance(carry, (tuple, list))
                or len(carry) != 2):
            raise ValueError(f"{what}: expected Flax's LSTM carry, the tuple (c, h) of [..., H] "
                             f"arrays, c first as initialize_carry returns it (the functional "
                             f"lstm.Carry is ordered (h, c): pass (carry.c, carry.h)); got {got}")
        c, h = carry
        core = carry_type(h=h, c=c)
    else:
        core = carry
    for name in fields:
        a, b = getattr(core, name), getattr(expected, name)
        if np.shape(a)[-1:] != b.shape[-1:]:
            raise ValueError(f"{what}: {name} has shape {tuple(np.shape(a))}, expected "
                             f"[..., {b.shape[-1]}] (hidden_size, Flax's features = "
                             f"{hidden_size})")
        if np.shape(a) != b.shape:
            raise ValueError(f"{what}: {name} has shape {tuple(np.shape(a))}, expected "
                             f"{b.shape} (the input's batch axes, then H)")
    return core


def _describe(carry: Any) -> str:
    if hasattr(carry, "_fields"):
        return f"{type(carry).__module__}.{type(carry).__qualname__}"
    if isinstance(carry, (tuple, list)):
        return f"a {type(carry).__name__} of {len(carry)}: {[_describe(c) for c in carry]}"
    if hasattr(carry, "shape"):
        return f"an array of shape {tuple(carry.shape)}"
    return repr(carry)


def initial_flax_carry(zero: Any, key: jax.Array | None, carry_init: Any) -> Any:
    """Flax's initial carry from the cell's zero Carry: zeros, or `carry_init(key, shape,
    dtype)` as Flax's cells draw it (LSTM: c from the first, h from the second of two keys)."""
    flax_carry = to_flax_carry(zero)
    if carry_init is None:
        return flax_carry
    if key is None:
        raise ValueError("carry_init: drawing the carry needs an rng (rngs= or rng)")
    if not isinstance(flax_carry, tuple):
        return carry_init(key, flax_carry.shape, flax_carry.dtype)
    keys = jax.random.split(key, len(flax_carry))
    return tuple(carry_init(k, a.shape, a.dtype) for k, a in zip(keys, flax_carry))


def _per_gate(init: Any, num_gates: int) -> Any:
    """Flax's per-gate initializer (one Dense per gate) on our fused `[..., G*H]` layout: an
    independent draw per gate block, in float32 for half dtypes."""
    if num_gates == 1:
        return initializers.drawn_in_float32(init)

    def per_gate(key, shape, dtype=jnp.float32):
        block = (*shape[:-1], shape[-1] // num_gates)
        return jnp.concatenate([init(k, block, dtype)
                                for k in jax.random.split(key, num_gates)], axis=-1)

    return initializers.drawn_in_float32(per_gate)


def flax_initializers(spec: layers.Spec, *, kernel_init: Any = None,
                      recurrent_kernel_init: Any = None, bias_init: Any = None) -> dict:
    """Flax's initializer keywords -> `init_params` overrides for `layers.init_cell`.

    Each is applied per gate block, as Flax's cells apply it to one Dense per gate; `bias_init`
    also draws the GRU's recurrent candidate bias (Flax's `hn` bias). None keeps the scheme's.
    """
    cell = spec.cell_fns
    if bias_init is not None and spec.init in (layers.Init.FORGET_BIAS, layers.Init.CHRONO):
        raise ValueError(f"bias_init: init_scheme={spec.init.value!r} sets the bias too; pass "
                         f"one of them")
    out = {}
    if kernel_init is not None:
        out["kernel_init"] = _per_gate(kernel_init, cell.NUM_GATES)
    if recurrent_kernel_init is not None:
        out["recurrent_init"] = _per_gate(recurrent_kernel_init, cell.NUM_GATES)
    if bias_init is not None:
        out["bias_init"] = _per_gate(bias_init, cell.NUM_GATES)
        out["candidate_bias_init"] = _per_gate(bias_init, 1)
    return {name: init for name, init in out.items() if name in cell.INITIALIZERS}


def hidden_size_of(what: str, **names: Any) -> int:
    """The hidden size given under one of Flax's or our names (e.g. features= or hidden_size=);
    raises ValueError unless exactly one value is given."""
    given = {name: value for name, value in names.items() if value is not None}
    if len(set(given.values())) != 1:
        raise ValueError(f"{what}: pass the hidden size once, as one of {list(names)}; got "
                         f"{given or 'none'}")
    return next(iter(given.values()))


def flax_step(spec: layers.Spec, params: Any, carry: Any, x: jax.Array, *, dtype: Any,
              what: str) -> tuple[Any, jax.Array]:
    """One step of a Flax cell: Flax's carry in and out, computed in `dtype` (Flax's meaning).

    dtype None computes in the promoted dtype of x, the params and the carry (Flax's
    `promote_dtype`), so an input of another float dtype is promoted, not refused. The new carry
    and the output come back in the incoming carry's dtype, so `nn.RNN`'s scan keeps one carry
    type.
    """
    cell = spec.cell_fns
    x = jnp.asarray(x)
    expected = jax.eval_shape(lambda: cell.zero_carry(params, tuple(np.shape(x))[:-1]))
    core = from_flax_carry(carry, expected, what=what, hidden_size=spec.hidden_size)
    leaves = [a for a in jax.tree_util.tree_leaves(params)] + jax.tree_util.tree_leaves(core)
    compute = jnp.dtype(dtype) if dtype is not None else jnp.result_type(x, *leaves)
    if not jnp.issubdtype(compute, jnp.floating):
        raise ValueError(f"{what}: dtype: expected a floating dtype, got {compute.name}")
    carry_dtype = jnp.result_type(*jax.tree_util.tree_leaves(core))
    cast = lambda tree, d: jax.tree_util.tree_map(lambda a: jnp.asarray(a, d), tree)  # noqa
    new, y = cell.step(cast(params, compute), cast(core, compute), x.astype(compute))
    return to_flax_carry(cast(new, carry_dtype)), y.astype(carry_dtype)


# --- Checkpoints of Flax's own cells <-> our Params ------------------------------------------

def _unwrap(tree: Any) -> Any:
    """A linen param dict or an NNX State (Variables as leaves) as nested dicts of arrays."""
    if isinstance(tree, nnx.Variable):
        return tree.get_value()
    if hasattr(tree, "items"):
        return {k: _unwrap(v) for k, v in tree.items()}
    return tree


def _gates_in(t: Mapping, names: tuple, part: str) -> jax.Array:
    return jnp.concatenate([t[n][part] for n in names], axis=-1)


def _gates_out(a: jax.Array, names: tuple, part: str, into: dict) -> None:
    for n, block in zip(names, jnp.split(a, len(names), axis=-1)):
        into.setdefault(n, {})[part] = block


def _lstm_gates(i_names, h_names):
    def to_ours(t):
        return lstm.Params(w_x=_gates_in(t, i_names, "kernel"), w_h=_gates_in(t, h_names, "kernel"),
                           b=_gates_in(t, h_names, "bias"))

    def to_flax(p):
        out = {}
        _gates_out(p.w_x, i_names, "kernel", out)
        _gates_out(p.w_h, h_names, "kernel", out)
        _gates_out(p.b, h_names, "bias", out)
        return out
    return lstm.Params, to_ours, to_flax


def _lstm_fused():
    def to_ours(t):
        return lstm.Params(w_x=t["dense_i"]["kernel"], w_h=t["dense_h"]["kernel"],
                           b=t["dense_h"]["bias"])

    def to_flax(p):
        return {"dense_i": {"kernel": p.w_x}, "dense_h": {"kernel": p.w_h, "bias": p.b}}
    return lstm.Params, to_ours, to_flax


def _gru_gates():
    i_names, h_names = ("ir", "iz", "in"), ("hr", "hz", "hn")

    def to_ours(t):
        return gru.Params(w_x=_gates_in(t, i_names, "kernel"), w_h=_gates_in(t, h_names, "kernel"),
                          b=_gates_in(t, i_names, "bias"), b_hn=t["hn"]["bias"])

    def to_flax(p):
        out = {}
        _gates_out(p.w_x, i_names, "kernel", out)
        _gates_out(p.b, i_names, "bias", out)
        _gates_out(p.w_h, h_names, "kernel", out)
        out["hn"]["bias"] = p.b_hn
        return out
    return gru.Params, to_ours, to_flax


def _gru_fused():
    # nnx.GRUCell: n = tanh(W_n x + b_n + r * (U_n h)), no recurrent candidate bias: b_hn = 0.
    def to_ours(t):
        w_h = t["dense_h"]["kernel"]
        return gru.Params(w_x=t["dense_i"]["kernel"], w_h=w_h, b=t["dense_i"]["bias"],
                          b_hn=jnp.zeros(w_h.shape[:1], w_h.dtype))

    def to_flax(p):
        b_hn = _concrete_max_abs(p.b_hn)
        if b_hn is None or b_hn != 0:
            raise ValueError(f"to_flax_cell: nnx.GRUCell has no recurrent candidate bias "
                             f"(n = tanh(W_n x + b_n + r * U_n h)), so b_hn must be 0 for an "
                             f"exact conversion; got max |b_hn| = {b_hn}. Use linen's "
                             f"nn.GRUCell (its hn bias), or zero b_hn")
        return {"dense_i": {"kernel": p.w_x, "bias": p.b}, "dense_h": {"kernel": p.w_h}}
    return gru.Params, to_ours, to_flax


def _simple(i_name, h_name):
    def to_ours(t):
        return rnn.Params(w_x=t[i_name]["kernel"], w_h=t[h_name]["kernel"], b=t[i_name]["bias"])

    def to_flax(p):
        return {i_name: {"kernel": p.w_x, "bias": p.b}, h_name: {"kernel": p.w_h}}
    return rnn.Params, to_ours, to_flax


def _concrete_max_abs(a: jax.Array) -> float | None:
    """max |a| when the values are known (not traced), else None."""
    try:
        return float(np.max(np.abs(np.asarray(a)))) if np.size(a) else 0.0
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _flax_layouts() -> dict:
    """Flax's cell classes -> (our Params type, Flax tree -> Params, Params -> Flax tree)."""
    import flax.linen as nn
    gates = ("i", "f", "g", "o")
    linen_lstm = _lstm_gates(tuple("i" + g for g in gates), tuple("h" + g for g in gates))
    return {
        nn.LSTMCell: linen_lstm,
        nn.OptimizedLSTMCell: linen_lstm,  # the same param names and shapes as nn.LSTMCell
        nn.GRUCell: _gru_gates(),
        nn.SimpleCell: _simple("i", "h"),
        nnx.LSTMCell: _lstm_gates(("ii", "if_", "ig", "io"), tuple("h" + g for g in gates)),
        nnx.OptimizedLSTMCell: _lstm_fused(),
        nnx.GRUCell: _gru_fused(),
        nnx.SimpleCell: _simple("dense_i", "dense_h"),
    }


def _flax_name(cls: Any) -> str:
    """"nn.LSTMCell" or "nnx.LSTMCell" (the spellings of Flax's docs)."""
    return ("nnx." if ".nnx." in cls.__module__ else "nn.") + cls.__name__


def _layout(flax_cls: Any) -> tuple:
    layouts = _flax_layouts()
    if flax_cls not in layouts:
        names = sorted(_flax_name(c) for c in layouts)
        raise ValueError(f"flax_cls: expected one of Flax's cell classes {names}, got "
                         f"{flax_cls!r}")
    return layouts[flax_cls]


def from_flax_cell(tree: Mapping, flax_cls: Any) -> Any:
    """The params of Flax's own cell -> our cell's Params, exactly (same outputs to rounding).

    Args:
      tree: the cell's params: linen `variables["params"]` (of the cell, e.g.
        `variables["params"]["cell"]` under `nn.RNN`) or an NNX `nnx.state(cell, nnx.Param)`.
      flax_cls: the Flax class they come from: `nn.LSTMCell`, `nn.OptimizedLSTMCell`,
        `nn.GRUCell`, `nn.SimpleCell`, `nnx.LSTMCell`, `nnx.OptimizedLSTMCell`, `nnx.GRUCell`,
        `nnx.SimpleCell`.

    Returns:
      `lstm.Params` (LSTM cells), `gru.Params` (GRU; `nnx.GRUCell` has no recurrent candidate
      bias, so b_hn = 0) or `rnn.Params` (SimpleCell, without `residual`), for `scan.run`,
      `layers.apply` or our Flax cells (`to_flax(params)`).
    """
    _, to_ours, _ = _layout(flax_cls)
    try:
        return to_ours(_unwrap(tree))
    except (KeyError, TypeError) as e:
        raise ValueError(f"from_flax_cell: the tree does not hold {_flax_name(flax_cls)}'s "
                         f"params (missing {e}); got entries {sorted(_unwrap(tree))}") from None


def to_flax_cell(params: Any, flax_cls: Any) -> dict:
    """The inverse of `from_flax_cell`: our Params -> the param tree of Flax's `flax_cls`.

    Returns nested dicts of arrays: `{"params": tree}` for a linen `apply`, or
    `nnx.update(cell, nnx.State(tree))` for an NNX cell. An LSTM with proj_size and a GRU with
    b_hn != 0 into `nnx.GRUCell` have no Flax counterpart and raise.
    """
    params_type, _, to_flax_tree = _layout(flax_cls)
    if not isinstance(params, params_type):
        raise ValueError(f"to_flax_cell: {_flax_name(flax_cls)} takes "
                         f"{params_type.__module__}.{params_type.__qualname__}, got "
                         f"{type(params).__module__}.{type(params).__qualname__}")
    if getattr(params, "w_hr", None) is not None:
        raise ValueError("to_flax_cell: Flax's LSTM cells have no output projection (w_hr, "
                         "proj_size > 0)")
    return to_flax_tree(params)
