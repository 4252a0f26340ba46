"""Functional params <-> the Flax modules' param trees, shared by `linen` and `nnx`.

Params are stored under the field names of the cell's `Params` (w_x, w_h, b, b_hn, w_hr), a
stack's per layer and direction ("layer0_fwd", "layer0_bwd", ...), so a checkpoint reads like the
functional params, and `to_flax` / `from_flax` convert between the two without copying.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import nnx

from gated_rnn import checks, layers

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
