"""Flax NNX wrappers: cells for `nnx.RNN` / `nnx.Bidirectional`, and stacks over `layers.apply`.

`NNXRNNCell`, `NNXLSTMCell`, `NNXGRUCell` subclass `nnx.RNNCellBase`; `NNXRNN`, `NNXLSTM`,
`NNXGRU` are stacks over `layers.apply`. An NNX cell's params are
`layers.init_cell(rngs.params(), spec, 0)`, an NNX stack's `layers.init(rngs.params(), spec)`,
stored as `nnx.Param`s named after the cell's Params fields.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from gated_rnn import layers
from gated_rnn.modules import convert


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
    """What the three NNX cells share; `CELL_TYPE` names the cell.

    Flax's constructor works as on `nnx.LSTMCell` & co.: `in_features`, `hidden_features` (or
    our `input_size`, `hidden_size`), `dtype` (computation; None: promote inputs and params),
    `param_dtype` (storage), `kernel_init`, `recurrent_kernel_init`, `bias_init` (per gate
    block), `carry_init`, `rngs`. The carry is Flax's: the tuple (c, h) for the LSTM, a bare
    array for the GRU and the RNN.
    """

    CELL_TYPE: ClassVar[layers.CellType]
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, in_features: Optional[int] = None, hidden_features: Optional[int] = None,
                 *, rngs: nnx.Rngs, input_size: Optional[int] = None,
                 hidden_size: Optional[int] = None, dtype: Any = None,
                 param_dtype: Any = jnp.float32, init_scheme: Any = layers.Init.DEFAULT,
                 forget_bias: float = 1.0, chrono_max_len: Optional[int] = None,
                 kernel_init: Any = None, recurrent_kernel_init: Any = None,
                 bias_init: Any = None, carry_init: Any = None, **cell_options):
        name = type(self).__name__
        self.in_features = convert.hidden_size_of(name, in_features=in_features,
                                                  input_size=input_size)
        self.hidden_features = convert.hidden_size_of(name, hidden_features=hidden_features,
                                                      hidden_size=hidden_size)
        self.spec = layers.Spec(cell=self.CELL_TYPE, input_size=self.in_features,
                                hidden_size=self.hidden_features, dtype=param_dtype,
                                init=init_scheme, forget_bias=forget_bias,
                                chrono_max_len=chrono_max_len,
                                **_check_cell_options(type(self), cell_options))
        self.dtype = dtype
        self.param_dtype = self.spec.dtype
        self.carry_init = carry_init
        overrides = convert.flax_initializers(self.spec, kernel_init=kernel_init,
                                              recurrent_kernel_init=recurrent_kernel_init,
                                              bias_init=bias_init)
        _nnx_set(self, layers.init_cell(rngs.params(), self.spec, 0, **overrides))

    @property
    def params(self) -> Any:
        """The functional Params (current values)."""
        return _nnx_get(self, self.spec.cell_fns.Params)

    def __call__(self, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        """One step: Flax's carry (LSTM (c, h), else a [B, H] array), x [B, I] -> (carry, y)."""
        return convert.flax_step(self.spec, self.params, carry, x, dtype=self.dtype,
                                 what=f"{type(self).__name__} carry")

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None,
                         carry_init: Any = None) -> Any:
        """Flax's carry for inputs of shape `input_shape` ([B, I]), in param_dtype: zeros, or
        drawn by `carry_init` (this call's, else the constructor's) from `rngs` (its "carry"
        stream), as Flax's cells draw it."""
        carry_init = self.carry_init if carry_init is None else carry_init
        key = None
        if carry_init is not None and rngs is not None:
            stream = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
            key = stream() if isinstance(stream, nnx.RngStream) else stream
        zero = self.spec.cell_fns.zero_carry(self.params, tuple(input_shape[:-1]))
        return convert.initial_flax_carry(zero, key, carry_init)

    @property
    def num_feature_axes(self) -> int:
        return 1


class NNXRNNCell(_NNXCell):
    """NNX tanh-RNN cell, for `nnx.RNN` where `nnx.SimpleCell` was:
    `NNXRNNCell(in_features, hidden_features, rngs=nnx.Rngs(0))`; carry a bare [B, H] array.

    Options: Flax's (dtype, param_dtype, kernel_init, recurrent_kernel_init, bias_init,
    carry_init) and ours (init_scheme, forget_bias, chrono_max_len, nonlinearity, as `RNNCell`).
    Params are `layers.init_cell(rngs.params(), spec, 0)`, as attributes w_x, w_h, b.
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("nonlinearity",)


class NNXLSTMCell(_NNXCell):
    """NNX LSTM cell, for `nnx.RNN` where `nnx.LSTMCell` / `nnx.OptimizedLSTMCell` was; carry
    Flax's tuple (c, h). Options as `NNXRNNCell`, plus proj_size. Params:
    `layers.init_cell(rngs.params(), spec, 0)`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.LSTM
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("proj_size",)


class NNXGRUCell(_NNXCell):
    """NNX GRU cell, for `nnx.RNN` where `nnx.GRUCell` was; carry a bare [B, H] array. Options
    as `NNXRNNCell`, plus gru_variant. Params: `layers.init_cell(rngs.params(), spec, 0)`."""

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
                 dtype: Any = jnp.float32, deterministic: bool = False,
                 time_major: bool = False, **cell_options):
        self.spec = layers.Spec(cell=self.CELL_TYPE, input_size=input_size,
                                hidden_size=hidden_size, num_layers=num_layers,
                                bidirectional=bidirectional, dropout=dropout,
                                init=init_scheme, forget_bias=forget_bias,
                                chrono_max_len=chrono_max_len, dtype=dtype,
                                **_check_cell_options(type(self), cell_options))
        self.plan = layers.Plan(unroll=unroll)
        self.time_major = time_major
        for l, layer in enumerate(layers.init(rngs.params(), self.spec)):
            for d, p in enumerate(layer):
                setattr(self, convert.layer_name(l, d), _NNXLayerParams(p))
        # As nnx.Dropout: `deterministic` is flipped by model.train() / model.eval(), and the
        # module keeps its own fork of the "dropout" stream.
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork() if dropout > 0 else nnx.data(None)

    @property
    def params(self) -> tuple:
        """The functional params (as `layers.init` returns them; current values)."""
        params_type = self.spec.cell_fns.Params
        return tuple(tuple(_nnx_get(getattr(self, convert.layer_name(l, d)), params_type)
                           for d in range(self.spec.num_directions))
                     for l in range(self.spec.num_layers))

    def __call__(self, xs: jax.Array, *, seq_lengths: Optional[jax.Array] = None,
                 initial_carry: Optional[tuple] = None, deterministic: Optional[bool] = None,
                 rngs: Any = None) -> tuple[jax.Array, tuple]:
        """Runs the stack (`layers.apply`).

        Args:
          xs: [B, T, I] inputs ([T, B, I] if the module was built with time_major=True).
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
                            initial_carry=initial_carry, plan=self.plan, dropout_key=dropout_key,
                            time_major=self.time_major)


class NNXRNN(_NNXStack):
    """NNX tanh-RNN stack: `NNXRNN(input_size, hidden_size, num_layers=..., rngs=nnx.Rngs(0))`.

    Options: the `layers.Spec` fields (with `init_scheme` for `init`), `unroll`, `deterministic`
    and `time_major` (inputs and outputs [T, B, ...], PyTorch's default layout).
    Params: `layers.init(rngs.params(), spec)`, under "layer0_fwd", "layer0_bwd", ...
    Option `nonlinearity`: "tanh" (default) or "relu".
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("nonlinearity",)


class NNXLSTM(_NNXStack):
    """NNX LSTM stack; options as `NNXRNN` plus proj_size."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.LSTM
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("proj_size",)


class NNXGRU(_NNXStack):
    """NNX GRU stack; options as `NNXRNN` plus gru_variant."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.GRU
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = ("gru_variant",)


# The cells added later (issue 13): an NNX cell for `nnx.RNN` and a stack each, with the common
# options only; the equations are in their modules.


class NNXIRNNCell(_NNXCell):
    """NNX IRNN cell (`irnn`: ReLU RNN, identity recurrent init) for `nnx.RNN`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.IRNN


class NNXURLSTMCell(_NNXCell):
    """NNX UR-LSTM cell (`urlstm`) for `nnx.RNN`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.URLSTM


class NNXMinGRUCell(_NNXCell):
    """NNX minGRU cell (`mingru`, the sequential step) for `nnx.RNN`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINGRU


class NNXMinLSTMCell(_NNXCell):
    """NNX minLSTM cell (`minlstm`, the sequential step) for `nnx.RNN`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINLSTM


class NNXIRNN(_NNXStack):
    """NNX IRNN stack; options as `NNXRNN` without nonlinearity."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.IRNN


class NNXURLSTM(_NNXStack):
    """NNX UR-LSTM stack; options as `NNXRNN` without nonlinearity."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.URLSTM


class NNXMinGRU(_NNXStack):
    """NNX minGRU stack (`linear_scan` per layer); options as `NNXIRNN`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINGRU


class NNXMinLSTM(_NNXStack):
    """NNX minLSTM stack (`linear_scan` per layer); options as `NNXIRNN`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINLSTM
