"""Flax linen wrappers: cells for `nn.RNN` / `nn.Bidirectional`, and stacks over `layers.apply`.

`RNNCell`, `LSTMCell`, `GRUCell` subclass `nn.RNNCellBase`, so `nn.RNN` and `nn.Bidirectional`
take them as they take Flax's own cells; a step is the cell's `step`, between Flax's carry and
keywords and the functional ones (`convert.flax_step`). `RNN`, `LSTM`, `GRU` are
stacks over `layers.apply` (one projection per layer hoisted out of the loop, outputs zero past
`seq_lengths`, dropout between layers when `deterministic=False`, drawn from the "dropout" rng).

A linen cell (or a stack's layer/direction) draws its Params in one
`layers.init_cell(self.make_rng("params"), spec, layer)` call when it is initialized, so it
agrees with the functional path value for value.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gated_rnn import layers
from gated_rnn.modules import convert


def _linen_params(module: nn.Module, spec: layers.Spec, layer: int, **overrides) -> Any:
    """Declares the cell's Params of `layer` as params of `module`, one per field.

    On init they are `layers.init_cell(module.make_rng("params"), spec, layer, **overrides)`:
    one draw by the functional code, so the module and the functional path agree value for
    value.
    """

    def draw(key):
        return layers.init_cell(key, spec, layer, **overrides)

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
    """What the three linen cells share; `CELL_TYPE` names the cell.

    Flax's constructor keywords work as on Flax's cells: `features` (or our `hidden_size`),
    `dtype` (computation; None: promote inputs and params), `param_dtype` (storage),
    `kernel_init`, `recurrent_kernel_init`, `bias_init` (per gate block, as Flax's one Dense
    per gate), `carry_init`. The carry is Flax's: the tuple (c, h) for the LSTM, a bare array
    for the GRU and the RNN.
    """

    CELL_TYPE: ClassVar[layers.CellType]

    hidden_size: Optional[int] = None
    features: Optional[int] = None  # Flax's name for hidden_size
    dtype: Any = None
    param_dtype: Any = jnp.float32
    init_scheme: Any = layers.Init.DEFAULT
    forget_bias: float = 1.0
    chrono_max_len: Optional[int] = None
    kernel_init: Any = None
    recurrent_kernel_init: Any = None
    bias_init: Any = None
    carry_init: Any = None

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {}

    @nn.nowrap
    def spec(self, input_size: int) -> layers.Spec:
        """The one-layer `layers.Spec` of this cell for inputs of size I (dtype: param_dtype)."""
        hidden = convert.hidden_size_of(type(self).__name__, hidden_size=self.hidden_size,
                                        features=self.features)
        return layers.Spec(cell=self.CELL_TYPE, input_size=input_size, hidden_size=hidden,
                           dtype=self.param_dtype, init=self.init_scheme,
                           forget_bias=self.forget_bias, chrono_max_len=self.chrono_max_len,
                           **self._cell_options())

    @nn.nowrap
    def _initializers(self, spec: layers.Spec) -> dict:
        return convert.flax_initializers(spec, kernel_init=self.kernel_init,
                                         recurrent_kernel_init=self.recurrent_kernel_init,
                                         bias_init=self.bias_init)

    @nn.compact
    def __call__(self, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        """One step.

        Args:
          carry: Flax's carry (from `initialize_carry`): LSTM the tuple (c, h) of [B, H]
            arrays, GRU and RNN a [B, H] array.
          x: [B, I] input (any number of leading batch axes).

        Returns:
          (carry, y): the new carry (same structure and dtype) and the output y [B, H]
          (LSTM: [B, proj_size or H]).
        """
        spec = self.spec(x.shape[-1])
        params = _linen_params(self, spec, 0, **self._initializers(spec))
        return convert.flax_step(spec, params, carry, x, dtype=self.dtype,
                                 what=f"{type(self).__name__} carry")

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
        """Flax's carry for inputs of shape `input_shape` ([B, I]), in param_dtype: zeros, or
        drawn by `carry_init` from `rng` as Flax's cells draw it."""
        spec = self.spec(input_shape[-1])
        shapes = jax.eval_shape(lambda key: layers.init_cell(key, spec, 0), jax.random.key(0))
        zero = spec.cell_fns.zero_carry(shapes, tuple(input_shape[:-1]))
        return convert.initial_flax_carry(zero, rng, self.carry_init)

    @property
    def num_feature_axes(self) -> int:
        return 1


class RNNCell(_LinenCell):
    """Linen tanh-RNN cell (`rnn.step`), for `nn.RNN` where `nn.SimpleCell` was; carry a bare
    [B, H] array. Params: w_x [I, H], w_h [H, H], b [H].

    Attributes:
      hidden_size (or Flax's features): H.
      dtype, param_dtype: computation and storage dtypes, as in Flax.
      init_scheme: a `layers.Init` or its name ("default", "torch"; the gate schemes are no-ops).
      forget_bias, chrono_max_len: as in `layers.Spec` (unused by the RNN).
      kernel_init, recurrent_kernel_init, bias_init, carry_init: Flax initializers, or None
        for the scheme's (zeros for the carry).
      nonlinearity: "tanh" (default) or "relu" (PyTorch's `nn.RNN(nonlinearity=...)`).
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN
    nonlinearity: Any = layers.Spec.nonlinearity

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}


class LSTMCell(_LinenCell):
    """Linen LSTM cell (`lstm.step`), for `nn.RNN` where `nn.LSTMCell` /
    `nn.OptimizedLSTMCell` was; carry Flax's tuple (c, h).

    Params: w_x [I, 4H], w_h [P, 4H], b [4H] (gates i, f, g, o) and, if proj_size > 0, w_hr [H, P]
    (`convert.to_flax_cell` / `from_flax_cell` map Flax's own LSTM params to these and back).

    Attributes:
      hidden_size (or Flax's features): H.
      dtype, param_dtype: computation and storage dtypes, as in Flax.
      init_scheme: a `layers.Init` or its name: "default", "forget_bias", "chrono", "torch".
      forget_bias: forget-gate bias for init_scheme="forget_bias".
      chrono_max_len: T_max for init_scheme="chrono".
      kernel_init, recurrent_kernel_init, bias_init, carry_init: Flax initializers, or None.
      proj_size: P > 0 projects h to P features (PyTorch's proj_size); 0: none.
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.LSTM
    proj_size: int = 0

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"proj_size": self.proj_size}


class GRUCell(_LinenCell):
    """Linen GRU cell (`gru.step`), for `nn.RNN` where `nn.GRUCell` was; carry a bare [B, H]
    array. Params: w_x [I, 3H], w_h [H, 3H], b [3H], b_hn [H].

    Attributes:
      hidden_size (or Flax's features): H.
      dtype, param_dtype: computation and storage dtypes, as in Flax.
      init_scheme: a `layers.Init` or its name: "default", "forget_bias", "chrono", "torch".
      forget_bias: update-gate bias towards keeping the state, for init_scheme="forget_bias".
      chrono_max_len: T_max for init_scheme="chrono".
      kernel_init, recurrent_kernel_init, bias_init, carry_init: Flax initializers, or None.
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
    time_major: bool = False

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {}

    @nn.nowrap
    def spec(self, input_size: int) -> layers.Spec:
        """The `layers.Spec` of this stack for inputs of size I."""
        return layers.Spec(cell=self.CELL_TYPE, input_size=input_size,
                           hidden_size=self.hidden_size, num_layers=self.num_layers,
                           bidirectional=self.bidirectional, dropout=self.dropout,
                           init=self.init_scheme,
                           forget_bias=self.forget_bias, chrono_max_len=self.chrono_max_len,
                           dtype=self.dtype, **self._cell_options())

    @nn.compact
    def __call__(self, xs: jax.Array, *, seq_lengths: Optional[jax.Array] = None,
                 initial_carry: Optional[tuple] = None,
                 deterministic: bool = True) -> tuple[jax.Array, tuple]:
        """Runs the stack (`layers.apply`).

        Args:
          xs: [B, T, I] inputs ([T, B, I] if the attribute `time_major` is True).
          seq_lengths: [B] lengths in [0, T], or None.
          initial_carry: carries shaped like the returned ones, or None for zeros.
          deterministic: False applies dropout between layers, with the "dropout" rng.

        Returns:
          (ys, final_carries): ys [B, T, (proj_size or H) * directions] ([T, B, ...] if
          time_major), zeros past each length;
          final_carries[layer][direction] the cell's Carry.
        """
        spec = self.spec(xs.shape[-1])
        params = tuple(tuple(_LinenLayerParams(spec, l, name=convert.layer_name(l, d))()
                             for d in range(spec.num_directions))
                       for l in range(spec.num_layers))
        use_dropout = not deterministic and spec.dropout > 0 and spec.num_layers > 1
        return layers.apply(spec, params, xs, seq_lengths=seq_lengths,
                            initial_carry=initial_carry, plan=layers.Plan(unroll=self.unroll),
                            time_major=self.time_major,
                            dropout_key=self.make_rng("dropout") if use_dropout else None)


class RNN(_LinenStack):
    """Linen tanh-RNN stack, like `torch.nn.RNN`. Attributes: the `layers.Spec` fields, with
    `init_scheme` for `init` (input_size is read off the input), `unroll`, and `time_major`
    (inputs and outputs [T, B, ...], PyTorch's default layout), and `nonlinearity` ("tanh",
    "relu")."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN
    nonlinearity: Any = layers.Spec.nonlinearity

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}


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


# The cells added later (issue 13): a linen cell for `nn.RNN` and a stack each, with the common
# attributes only (see `RNNCell` / `RNN`); the equations are in their modules.


class IRNNCell(_LinenCell):
    """Linen IRNN cell (`irnn`: ReLU RNN, identity recurrent init) for `nn.RNN`."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.IRNN


class URLSTMCell(_LinenCell):
    """Linen UR-LSTM cell (`urlstm`) for `nn.RNN`. Params: w_x, w_h, b (f, r, u, o), b_f."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.URLSTM


class MinGRUCell(_LinenCell):
    """Linen minGRU cell (`mingru`, the sequential step) for `nn.RNN`. Params: w_x, b."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINGRU


class MinLSTMCell(_LinenCell):
    """Linen minLSTM cell (`minlstm`, the sequential step) for `nn.RNN`. Params: w_x, b."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINLSTM


class IRNN(_LinenStack):
    """Linen IRNN stack (attributes as `RNN`, without nonlinearity)."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.IRNN


class URLSTM(_LinenStack):
    """Linen UR-LSTM stack (attributes as `RNN`, without nonlinearity)."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.URLSTM


class MinGRU(_LinenStack):
    """Linen minGRU stack (`linear_scan` per layer: the loop on CPU, the scan elsewhere)."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINGRU


class MinLSTM(_LinenStack):
    """Linen minLSTM stack (`linear_scan` per layer: the loop on CPU, the scan elsewhere)."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINLSTM
