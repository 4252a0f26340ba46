"""Thin Flax wrappers: linen cells for `nn.RNN`, linen and NNX stacks, NNX cells for `nnx.RNN`.

A wrapper only holds params and calls the functional code; the equations live in the cells
(`rnn`, `lstm`, `gru`), the loop in `scan` / `layers`.

Linen
  `RNNCell`, `LSTMCell`, `GRUCell` subclass `nn.RNNCellBase`, so `nn.RNN` and
  `nn.Bidirectional` take them as they take Flax's own cells. A step is `cell.step`.
  `RNN`, `LSTM`, `GRU` are stacks over `layers.apply` (one projection per layer hoisted out of
  the loop, outputs zero past `seq_lengths`, dropout between layers when `deterministic=False`,
  drawn from the "dropout" rng).
NNX
  `NNXRNNCell`, `NNXLSTMCell`, `NNXGRUCell` subclass `nnx.RNNCellBase` (for `nnx.RNN` and
  `nnx.Bidirectional`); `NNXRNN`, `NNXLSTM`, `NNXGRU` are stacks over `layers.apply`.

Params are stored under the field names of the cell's `Params` (w_x, w_h, b, b_hn, w_hr), a stack's
per layer and direction ("layer0_fwd", "layer0_bwd", ...), so a checkpoint reads like the
functional params, and `to_flax` / `from_flax` convert between the two without copying.

Initialization uses the functional code itself (`layers.init_cell`, hence the same
`initializers` factories):
  * a linen cell (or a linen stack's layer/direction) draws its Params in one
    `layers.init_cell(self.make_rng("params"), spec, layer)` call when it is initialized;
  * an NNX cell is `layers.init_cell(rngs.params(), spec, 0)`, an NNX stack
    `layers.init(rngs.params(), spec)`.

The init scheme attribute is `init_scheme` (`layers.Spec.init`), since `init` is linen's method.
The modules compute in `dtype`, which is also the params' dtype; inputs must have it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from gated_rnn import checks, layers

_DIRECTIONS = ("fwd", "bwd")


def _layer_name(layer: int, direction: int) -> str:
    return f"layer{layer}_{_DIRECTIONS[direction]}"


# --- conversion between functional params and the modules' param trees -----------------------


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
    return {_layer_name(l, d): to_flax(p) for l, layer in enumerate(params)
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
    expected = {_layer_name(l, d) for l in range(spec.num_layers)
                for d in range(spec.num_directions)}
    if set(tree) != expected:
        raise ValueError(f"from_flax: expected entries {sorted(expected)} for num_layers="
                         f"{spec.num_layers}, bidirectional={spec.bidirectional}; got "
                         f"{sorted(tree)}")
    return tuple(tuple(unpack(tree[_layer_name(l, d)]) for d in range(spec.num_directions))
                 for l in range(spec.num_layers))


def _check_cell_carry(spec: layers.Spec, params: Any, carry: Any, x: jax.Array) -> None:
    expected = jax.eval_shape(lambda: spec.cell_fns.zero_carry(params, x.shape[:-1]))
    checks.check_carry(carry, expected, what=f"{spec.cell.value} cell carry")


# --- linen --------------------------------------------------------------------------------------


def _linen_params(module: nn.Module, spec: layers.Spec, layer: int) -> Any:
    """Declares the cell's Params of `layer` as params of `module`, one per field.

    On init they are `layers.init_cell(module.make_rng("params"), spec, layer)`: one draw by the
    functional code, so the module and the functional path agree value for value.
    """

    def draw(key):
        return layers.init_cell(key, spec, layer)

    shapes = jax.eval_shape(draw, jax.random.key(0))
    names = [name for name, shape in shapes._asdict().items() if shape is not None]
    drawn = None
    if module.is_initializing() and not module.has_variable("params", names[0]):
        drawn = draw(module.make_rng("params"))
    # Once the params exist, Flax still calls each init function, under eval_shape, to check
    # the stored shape; `draw(key)` serves that (it is only traced).
    return shapes._replace(**{
        name: module.param(name, lambda key, name=name: getattr(
            draw(key) if drawn is None else drawn, name))
        for name in names})


class _LinenCell(nn.RNNCellBase):
    """What the three linen cells share; `CELL_TYPE` names the cell."""

    CELL_TYPE: ClassVar[layers.CellType]

    hidden_size: int
    dtype: Any = jnp.float32
    init_scheme: Any = layers.Init.DEFAULT
    forget_bias: float = 1.0
    chrono_max_len: Optional[int] = None

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {}

    @nn.nowrap
    def spec(self, input_size: int) -> layers.Spec:
        """The one-layer `layers.Spec` of this cell for inputs of size I."""
        return layers.Spec(cell=self.CELL_TYPE, input_size=input_size,
                           hidden_size=self.hidden_size, dtype=self.dtype,
                           init=self.init_scheme, forget_bias=self.forget_bias,
                           chrono_max_len=self.chrono_max_len, **self._cell_options())

    @nn.compact
    def __call__(self, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        """One step.

        Args:
          carry: the cell's Carry with [B, H] fields (from `initialize_carry`).
          x: [B, I] input (any number of leading batch axes).

        Returns:
          (carry, y): the new carry and the output y [B, H] (LSTM: [B, proj_size or H]).
        """
        spec = self.spec(x.shape[-1])
        params = _linen_params(self, spec, 0)
        _check_cell_carry(spec, params, carry, x)
        return spec.cell_fns.step(params, carry, x)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
        """Zero carry for inputs of shape `input_shape` ([B, I]); `rng` is unused."""
        del rng
        spec = self.spec(input_shape[-1])
        shapes = jax.eval_shape(lambda key: layers.init_cell(key, spec, 0), jax.random.key(0))
        return spec.cell_fns.zero_carry(shapes, tuple(input_shape[:-1]))

    @property
    def num_feature_axes(self) -> int:
        return 1


class RNNCell(_LinenCell):
    """Linen tanh-RNN cell (`rnn.step`) for `nn.RNN`. Params: w_x [I, H], w_h [H, H], b [H].

    Attributes:
      hidden_size: H.
      dtype: params' and inputs' dtype.
      init_scheme: a `layers.Init` or its name ("default", "torch"; the gate schemes are no-ops).
      forget_bias, chrono_max_len: as in `layers.Spec` (unused by the RNN).
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN


class LSTMCell(_LinenCell):
    """Linen LSTM cell (`lstm.step`) for `nn.RNN`; carry `lstm.Carry(h, c)`, not Flax's (c, h).

    Params: w_x [I, 4H], w_h [P, 4H], b [4H] (gates i, f, g, o) and, if proj_size > 0, w_hr [H, P].

    Attributes:
      hidden_size: H.
      dtype: params' and inputs' dtype.
      init_scheme: a `layers.Init` or its name: "default", "forget_bias", "chrono", "torch".
      forget_bias: forget-gate bias for init_scheme="forget_bias".
      chrono_max_len: T_max for init_scheme="chrono".
      proj_size: P > 0 projects h to P features (PyTorch's proj_size); 0: none.
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.LSTM
    proj_size: int = 0

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"proj_size": self.proj_size}


class GRUCell(_LinenCell):
    """Linen GRU cell (`gru.step`) for `nn.RNN`. Params: w_x [I, 3H], w_h [H, 3H], b [3H], b_hn [H].

    Attributes:
      hidden_size: H.
      dtype: params' and inputs' dtype.
      init_scheme: a `layers.Init` or its name: "default", "forget_bias", "chrono", "torch".
      forget_bias: update-gate bias towards keeping the state, for init_scheme="forget_bias".
      chrono_max_len: T_max for init_scheme="chrono".
      gru_variant: "reset_after" (PyTorch, Flax; default) or "reset_before" (Cho et al.); see `gru`.
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.GRU
    gru_variant: Any = layers.Spec.gru_variant  # Spec's default: RESET_AFTER

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"gru_variant": self.gru_variant}


class _LinenLayerParams(nn.Module):
    """Holds one layer/direction's Params of a linen stack (its own scope: "layer0_fwd", ...)."""

    spec: layers.Spec
    layer: int

    @nn.compact
    def __call__(self) -> Any:
        return _linen_params(self, self.spec, self.layer)


class _LinenStack(nn.Module):
    """What the three linen stacks share; `CELL_TYPE` names the cell."""

    CELL_TYPE: ClassVar[layers.CellType]

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    init_scheme: Any = layers.Init.DEFAULT
    forget_bias: float = 1.0
    chrono_max_len: Optional[int] = None
    unroll: int = 1
    dtype: Any = jnp.float32

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {}

    @nn.nowrap
    def spec(self, input_size: int) -> layers.Spec:
        """The `layers.Spec` of this stack for inputs of size I."""
        return layers.Spec(cell=self.CELL_TYPE, input_size=input_size,
                           hidden_size=self.hidden_size, num_layers=self.num_layers,
                           bidirectional=self.bidirectional, dropout=self.dropout,
                           init=self.init_scheme, forget_bias=self.forget_bias,
                           chrono_max_len=self.chrono_max_len, dtype=self.dtype,
                           **self._cell_options())

    @nn.compact
    def __call__(self, xs: jax.Array, *, seq_lengths: Optional[jax.Array] = None,
                 initial_carry: Optional[tuple] = None,
                 deterministic: bool = True) -> tuple[jax.Array, tuple]:
        """Runs the stack (`layers.apply`).

        Args:
          xs: [B, T, I] inputs.
          seq_lengths: [B] lengths in [0, T], or None.
          initial_carry: carries shaped like the returned ones, or None for zeros.
          deterministic: False applies dropout between layers, with the "dropout" rng.

        Returns:
          (ys, final_carries): ys [B, T, (proj_size or H) * directions], zeros past each length;
          final_carries[layer][direction] the cell's Carry.
        """
        spec = self.spec(xs.shape[-1])
        params = tuple(tuple(_LinenLayerParams(spec, l, name=_layer_name(l, d))()
                             for d in range(spec.num_directions))
                       for l in range(spec.num_layers))
        use_dropout = not deterministic and spec.dropout > 0 and spec.num_layers > 1
        return layers.apply(spec, params, xs, seq_lengths=seq_lengths,
                            initial_carry=initial_carry, plan=layers.Plan(unroll=self.unroll),
                            dropout_key=self.make_rng("dropout") if use_dropout else None)


class RNN(_LinenStack):
    """Linen tanh-RNN stack, like `torch.nn.RNN`. Attributes: the `layers.Spec` fields, with
    `init_scheme` for `init` (input_size is read off the input)."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN


class LSTM(_LinenStack):
    """Linen LSTM stack, like `torch.nn.LSTM` (num_layers, bidirectional, dropout, proj_size).

    Attributes: the `layers.Spec` fields, with `init_scheme` for `init` (input_size is read off
    the input). Params: {"layer0_fwd": {"w_x", "w_h", "b"[, "w_hr"]}, "layer0_bwd": ..., ...}.
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.LSTM
    proj_size: int = 0

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"proj_size": self.proj_size}


class GRU(_LinenStack):
    """Linen GRU stack, like `torch.nn.GRU`, in either variant (`gru_variant`).

    Attributes: the `layers.Spec` fields, with `init_scheme` for `init` (input_size is read off
    the input). Params: {"layer0_fwd": {"w_x", "w_h", "b", "b_hn"}, ...}.
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.GRU
    gru_variant: Any = layers.Spec.gru_variant  # Spec's default: RESET_AFTER

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"gru_variant": self.gru_variant}


# --- NNX ----------------------------------------------------------------------------------------


def _check_cell_options(cls: type, options: dict) -> dict:
    unknown = set(options) - set(cls.CELL_OPTIONS)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown options {sorted(unknown)}; this cell takes "
                         f"{list(cls.CELL_OPTIONS) or 'none'} besides the common ones")
    return options


def _nnx_set(module: nnx.Module, params: Any) -> None:
    """Stores a cell's Params on `module` as NNX variables named after its fields."""
    for name, value in params._asdict().items():
        setattr(module, name, None if value is None else nnx.Param(value))


def _nnx_get(module: nnx.Module, params_type: type) -> Any:
    """The cell's Params (of type `params_type`) of the current values stored by `_nnx_set`."""
    return params_type(**{name: None if getattr(module, name) is None
                          else getattr(module, name).get_value()
                          for name in params_type._fields})


class _NNXLayerParams(nnx.Module):
    """One layer/direction's Params of an NNX stack ("layer0_fwd", ...)."""

    def __init__(self, params: Any):
        _nnx_set(self, params)


class _NNXCell(nnx.RNNCellBase):
    """What the three NNX cells share; `CELL_TYPE` names the cell."""

    CELL_TYPE: ClassVar[layers.CellType]
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, init_scheme: Any = layers.Init.DEFAULT,
                 forget_bias: float = 1.0, chrono_max_len: Optional[int] = None,
                 **cell_options):
        self.spec = layers.Spec(cell=self.CELL_TYPE, input_size=input_size,
                                hidden_size=hidden_size, dtype=dtype, init=init_scheme,
                                forget_bias=forget_bias, chrono_max_len=chrono_max_len,
                                **_check_cell_options(type(self), cell_options))
        _nnx_set(self, layers.init_cell(rngs.params(), self.spec, 0))

    @property
    def params(self) -> Any:
        """The functional Params (current values)."""
        return _nnx_get(self, self.spec.cell_fns.Params)

    def __call__(self, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        """One step: carry with [B, H] fields, x [B, I] -> (carry, y [B, H])."""
        params = self.params
        _check_cell_carry(self.spec, params, carry, x)
        return self.spec.cell_fns.step(params, carry, x)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None,
                         carry_init: Any = None) -> Any:
        """Zero carry for inputs of shape `input_shape` ([B, I]); rngs and carry_init unused."""
        del rngs, carry_init
        return self.spec.cell_fns.zero_carry(self.params, tuple(input_shape[:-1]))

    @property
    def num_feature_axes(self) -> int:
        return 1


class NNXRNNCell(_NNXCell):
    """NNX tanh-RNN cell for `nnx.RNN`: `NNXRNNCell(input_size, hidden_size, rngs=nnx.Rngs(0))`.

    Options: dtype, init_scheme, forget_bias, chrono_max_len (as `RNNCell`). Params are
    `layers.init_cell(rngs.params(), spec, 0)`, as attributes w_x, w_h, b.
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN


class NNXLSTMCell(_NNXCell):
    """NNX LSTM cell for `nnx.RNN`; options as `LSTMCell` (dtype, init_scheme, forget_bias,
    chrono_max_len, proj_size). Params: `layers.init_cell(rngs.params(), spec, 0)`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.LSTM
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("proj_size",)


class NNXGRUCell(_NNXCell):
    """NNX GRU cell for `nnx.RNN`; options as `GRUCell` (dtype, init_scheme, forget_bias,
    chrono_max_len, gru_variant). Params: `layers.init_cell(rngs.params(), spec, 0)`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.GRU
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("gru_variant",)


class _NNXStack(nnx.Module):
    """What the three NNX stacks share; `CELL_TYPE` names the cell."""

    CELL_TYPE: ClassVar[layers.CellType]
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 init_scheme: Any = layers.Init.DEFAULT, forget_bias: float = 1.0,
                 chrono_max_len: Optional[int] = None, unroll: int = 1,
                 dtype: Any = jnp.float32, deterministic: bool = False, **cell_options):
        self.spec = layers.Spec(cell=self.CELL_TYPE, input_size=input_size,
                                hidden_size=hidden_size, num_layers=num_layers,
                                bidirectional=bidirectional, dropout=dropout,
                                init=init_scheme, forget_bias=forget_bias,
                                chrono_max_len=chrono_max_len, dtype=dtype,
                                **_check_cell_options(type(self), cell_options))
        self.plan = layers.Plan(unroll=unroll)
        for l, layer in enumerate(layers.init(rngs.params(), self.spec)):
            for d, p in enumerate(layer):
                setattr(self, _layer_name(l, d), _NNXLayerParams(p))
        # As nnx.Dropout: `deterministic` is flipped by model.train() / model.eval(), and the
        # module keeps its own fork of the "dropout" stream.
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork() if dropout > 0 else nnx.data(None)

    @property
    def params(self) -> tuple:
        """The functional params (as `layers.init` returns them; current values)."""
        params_type = self.spec.cell_fns.Params
        return tuple(tuple(_nnx_get(getattr(self, _layer_name(l, d)), params_type)
                           for d in range(self.spec.num_directions))
                     for l in range(self.spec.num_layers))

    def __call__(self, xs: jax.Array, *, seq_lengths: Optional[jax.Array] = None,
                 initial_carry: Optional[tuple] = None, deterministic: Optional[bool] = None,
                 rngs: Any = None) -> tuple[jax.Array, tuple]:
        """Runs the stack (`layers.apply`).

        Args:
          xs: [B, T, I] inputs.
          seq_lengths: [B] lengths in [0, T], or None.
          initial_carry: carries shaped like the returned ones, or None for zeros.
          deterministic: overrides the attribute (set by `.train()` / `.eval()`); False applies
            dropout between layers.
          rngs: a key, RngStream or Rngs for the dropout mask; defaults to the module's stream.

        Returns:
          (ys, final_carries) as `layers.apply`: ys [B, T, (proj_size or H) * directions].
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        dropout_key = None
        if not deterministic and self.spec.dropout > 0 and self.spec.num_layers > 1:
            rngs = self.rngs if rngs is None else rngs
            if rngs is None:
                raise ValueError("dropout: deterministic=False needs rngs (pass rngs= to the "
                                 "constructor or the call)")
            if isinstance(rngs, nnx.Rngs):
                rngs = rngs["dropout"]
            dropout_key = rngs() if isinstance(rngs, nnx.RngStream) else rngs
        return layers.apply(self.spec, self.params, xs, seq_lengths=seq_lengths,
                            initial_carry=initial_carry, plan=self.plan, dropout_key=dropout_key)


class NNXRNN(_NNXStack):
    """NNX tanh-RNN stack: `NNXRNN(input_size, hidden_size, num_layers=..., rngs=nnx.Rngs(0))`.

    Options: the `layers.Spec` fields (with `init_scheme` for `init`) and `deterministic`.
    Params: `layers.init(rngs.params(), spec)`, under "layer0_fwd", "layer0_bwd", ...
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN


class NNXLSTM(_NNXStack):
    """NNX LSTM stack; options as `NNXRNN` plus proj_size."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.LSTM
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("proj_size",)


class NNXGRU(_NNXStack):
    """NNX GRU stack; options as `NNXRNN` plus gru_variant."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.GRU
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("gru_variant",)
