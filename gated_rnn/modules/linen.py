"""Flax linen wrappers: cells for `nn.RNN` / `nn.Bidirectional`, and stacks over `layers.apply`.

`RNNCell`, `LSTMCell`, `GRUCell` subclass `nn.RNNCellBase`, so `nn.RNN` and `nn.Bidirectional`
take them as they take Flax's own cells; a step is the cell's `step`. `RNN`, `LSTM`, `GRU` are
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
        convert.check_cell_carry(spec, params, carry, x)
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
      nonlinearity: "tanh" (default) or "relu" (PyTorch's `nn.RNN(nonlinearity=...)`).
    """

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.RNN
    nonlinearity: Any = layers.Spec.nonlinearity

    @nn.nowrap
    def _cell_options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}


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
    """Linen minGRU stack: the parallel scan (`linear_scan`) per layer."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINGRU


class MinLSTM(_LinenStack):
    """Linen minLSTM stack: the parallel scan (`linear_scan`) per layer."""

    CELL_TYPE: ClassVar[layers.CellType] = layers.CellType.MINLSTM
