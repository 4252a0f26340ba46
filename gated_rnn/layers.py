"""Stacks of recurrent layers, like PyTorch's `nn.LSTM` / `nn.GRU` / `nn.RNN`.

A `Spec` (frozen, hashable: usable as a `jax.jit` static argument) describes the stack, its
architecture and init; `init(key, spec)` draws its params and `apply(spec, params, xs)` runs
it. A `Plan` (as hashable) says how to run it (loop implementation, remat, chunk length, matmul
dtype, unroll): the same numbers every way, different speed and memory.

    spec = layers.Spec(cell="lstm", input_size=8, hidden_size=64, num_layers=2,
                       bidirectional=True, dropout=0.1)
    params = layers.init(key, spec)         # params[layer][direction] -> cell Params
    ys, finals = layers.apply(spec, params, xs, seq_lengths=lengths, dropout_key=k,
                              plan=layers.Plan(remat=True))

Layer l > 0 reads the concatenated [forward, backward] outputs of layer l - 1. Dropout acts on
each layer's outputs except the last layer's, never on the recurrent path (as in PyTorch), and
only when a `dropout_key` is given.

This module holds the one registry from cell types (`Spec.cell`) to cells (`_CELLS`); the rest
of the library reads what it needs off the cell (the protocol: `gated_rnn/__init__.py`).
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import (checks, gru, initializers, irnn, lstm, mingru, minlstm, rnn, scan,
                       urlstm)


class CellType(enum.Enum):
    """The name of a cell (`Spec.cell`); `_CELLS` maps it to the cell.

    Names are read case-insensitively, so PyTorch's spellings work: "LSTM", "GRU", "RNN" and its
    mode name "RNN_TANH" (PyTorch's "RNN_RELU" is `cell="rnn", nonlinearity="relu"`).
    """

    RNN = "rnn"
    LSTM = "lstm"
    GRU = "gru"
    IRNN = "irnn"
    URLSTM = "urlstm"
    MINGRU = "mingru"
    MINLSTM = "minlstm"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            name = value.lower()
            return {"rnn_tanh": cls.RNN}.get(name) or next(
                (member for member in cls if member.value == name), None)
        return None


# The one registry: cell type -> the cell the spec names (a module or object with the protocol's
# names). A new cell: its module, a CellType member, and its line here.
_CELLS: dict[CellType, Callable[[Spec], Any]] = {
    CellType.RNN: lambda spec: rnn.cell(spec.nonlinearity),
    CellType.LSTM: lambda spec: lstm,
    CellType.GRU: lambda spec: gru.cell(spec.gru_variant),
    CellType.IRNN: lambda spec: irnn,
    CellType.URLSTM: lambda spec: urlstm,
    CellType.MINGRU: lambda spec: mingru,
    CellType.MINLSTM: lambda spec: minlstm,
}


class Init(enum.Enum):
    """Initialization schemes (kernels and biases; see `initializers`).

    DEFAULT: orthogonal recurrent kernels (per gate), Lecun-normal input kernels, zero biases.
    FORGET_BIAS: DEFAULT plus a bias of `forget_bias` towards keeping the state (the cell's
      `forget_bias_init`): the LSTM forget gate (Jozefowicz et al. 2015); the GRU update gate in
      its "keep" direction; nothing for the RNN, which has no gate.
    CHRONO: DEFAULT plus chrono biases (Tallec & Ollivier 2018) for `T_max = chrono_max_len`
      (the cell's `chrono_bias_init`): LSTM `b_f ~ log U[1, T_max - 1]`, `b_i = -b_f`; GRU the
      update gate, keep direction. Nothing for the RNN.
    TORCH: PyTorch's default, every weight and bias `U(-1/sqrt(H), 1/sqrt(H))` (a summed bias is
      one draw, not the sum of PyTorch's two).
    """

    DEFAULT = "default"
    FORGET_BIAS = "forget_bias"
    CHRONO = "chrono"
    TORCH = "torch"


@dataclasses.dataclass(frozen=True)
class Spec:
    """A stack of recurrent layers: architecture and init. Strings are accepted for the enums."""

    cell: CellType
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    gru_variant: gru.Variant = gru.Variant.RESET_AFTER
    nonlinearity: rnn.Nonlinearity = rnn.Nonlinearity.TANH  # cell="rnn" only: "tanh" or "relu"
    init: Init = Init.DEFAULT
    forget_bias: float = 1.0
    chrono_max_len: Optional[int] = None
    proj_size: int = 0
    dtype: Any = jnp.float32

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("cell", checks.enum_value(CellType, self.cell, "cell"))
        set_("gru_variant", checks.enum_value(gru.Variant, self.gru_variant, "gru_variant"))
        set_("nonlinearity", checks.enum_value(rnn.Nonlinearity, self.nonlinearity,
                                               "nonlinearity"))
        if self.nonlinearity is not rnn.Nonlinearity.TANH and self.cell is not CellType.RNN:
            raise ValueError(f"nonlinearity={self.nonlinearity.value!r}: only cell='rnn' takes "
                             f"one; got cell={self.cell.value!r}")
        set_("init", checks.enum_value(Init, self.init, "init"))
        set_("dtype", checks.check_float_dtype(self.dtype, "dtype"))
        for name in ("input_size", "hidden_size", "num_layers"):
            checks.check_int(getattr(self, name), name)
        checks.check_int(self.proj_size, "proj_size", minimum=0)
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise ValueError(f"bidirectional: expected a bool, got {self.bidirectional!r}")
        set_("dropout", checks.check_rate(self.dropout, "dropout"))
        if self.dropout > 0 and self.num_layers == 1:
            # PyTorch's words: dropout acts between layers, so one layer has none.
            warnings.warn(f"dropout={self.dropout} with num_layers=1 does nothing: dropout acts "
                          f"on each layer's output except the last layer's", stacklevel=3)
        if (isinstance(self.forget_bias, (bool, np.bool_))
                or not isinstance(self.forget_bias, (int, float, np.number))
                or not np.isfinite(self.forget_bias)):
            raise ValueError(f"forget_bias: expected a finite number, got {self.forget_bias!r}")
        if self.chrono_max_len is not None and self.init is not Init.CHRONO:
            raise ValueError(f"chrono_max_len: only init='chrono' reads it; got "
                             f"chrono_max_len={self.chrono_max_len!r} with "
                             f"init={self.init.value!r} (leave it None)")
        if self.proj_size and not self.cell_fns.SUPPORTS_PROJ:
            raise ValueError(f"proj_size: expected 0, or > 0 for a cell with an output "
                             f"projection (of ours, the LSTM only); got {self.proj_size!r} for "
                             f"cell {self.cell.value!r}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: must be < hidden_size={self.hidden_size} (as in "
                             f"PyTorch), got {self.proj_size}")
        if self.init is Init.CHRONO and not (isinstance(self.chrono_max_len, (int, np.integer))
                                             and self.chrono_max_len >= 3):
            raise ValueError(f"chrono_max_len: init='chrono' needs T_max >= 3, got "
                             f"{self.chrono_max_len!r}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of the stack's output: (proj_size or H) * directions."""
        return (self.proj_size or self.hidden_size) * self.num_directions

    @property
    def cell_fns(self) -> Any:
        """The cell this spec names (`_CELLS`): a module (`rnn`, `lstm`) or object
        (`gru.cell(variant)`) with the protocol's functions and facts."""
        return _CELLS[self.cell](self)

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size


@dataclasses.dataclass(frozen=True)
class Plan:
    """How `apply` runs a stack: the same numbers every way, different speed and memory (see
    `scan.run` and README "Performance"). Strings are accepted for `impl` and `matmul_dtype`.

    Attributes:
      impl: the loop implementation, `scan.Impl` or its name; AUTO takes the fused path where
        the cell has one.
      remat: keep only the carry at chunk starts and recompute the steps in the backward pass.
      chunk_size: steps per chunk of the fused projection (and of remat); None picks one.
      matmul_dtype: None, or a dtype (e.g. "bfloat16") for the fused path's matmul operands.
      unroll: steps per iteration of the step loops.
    """

    impl: scan.Impl = scan.Impl.AUTO
    remat: bool = False
    chunk_size: Optional[int] = None
    matmul_dtype: Any = None
    unroll: int = 1

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("impl", checks.enum_value(scan.Impl, self.impl, "impl"))
        set_("matmul_dtype", scan.check_options(unroll=self.unroll, remat=self.remat,
                                                chunk_size=self.chunk_size,
                                                matmul_dtype=self.matmul_dtype))
        if self.matmul_dtype is not None and self.impl in (scan.Impl.SCAN, scan.Impl.CUDNN):
            raise _matmul_dtype_error(self, self.impl)


def _matmul_dtype_error(plan: Plan, impl: scan.Impl, cell: str = "") -> ValueError:
    return ValueError(f"matmul_dtype={plan.matmul_dtype.name!r} needs the fused implementation "
                      f"of a cell with a recurrent matmul; "
                      f"got impl={impl.value!r}" + (f" for cell {cell!r}" if cell else ""))


def check_plan(spec: Spec, plan: Plan) -> None:
    """Raises ValueError unless `plan` can run `spec`'s cell (e.g. impl='fused' needs a cell
    with an `update` split, so not the reset-before GRU)."""
    if not isinstance(plan, Plan):
        raise ValueError(f"plan: expected a layers.Plan, got {type(plan).__name__}")
    impl = scan.resolve_impl(spec.cell_fns, plan.impl)
    if plan.matmul_dtype is not None and not scan.takes_matmul_dtype(spec.cell_fns, impl):
        raise _matmul_dtype_error(plan, plan.impl, spec.cell.value)


def output_size(spec: Spec) -> int:
    """Features of `apply`'s output: (proj_size or H) * directions."""
    return spec.output_size


def init_kwargs(spec: Spec) -> dict:
    """The initializer keyword arguments of the spec's `cell.init_params`."""
    cell = spec.cell_fns
    if spec.init is Init.TORCH:
        u = initializers.torch_default(spec.hidden_size)
        return {name: u for name in cell.INITIALIZERS}
    # DEFAULT: the cell's own defaults (rnn, lstm, gru: Lecun-normal W, orthogonal U per gate,
    # zero b; irnn: identity U; urlstm: UGI forget bias).
    kwargs = {}
    bias_init = None
    if spec.init is Init.FORGET_BIAS:
        bias_init = cell.forget_bias_init(spec.forget_bias)
    elif spec.init is Init.CHRONO:
        bias_init = cell.chrono_bias_init(spec.chrono_max_len)
    if bias_init is not None:
        kwargs["bias_init"] = bias_init
    return kwargs


def init_cell(key: jax.Array, spec: Spec, layer: int, **initializer_overrides) -> Any:
    """Params of one direction of layer `layer`; `initializer_overrides` (keywords of the cell's
    `init_params`, e.g. kernel_init) replace the scheme's."""
    cell = spec.cell_fns
    extra = {"proj_size": spec.proj_size} if cell.SUPPORTS_PROJ else {}
    return cell.init_params(key, spec.layer_input_size(layer), spec.hidden_size,
                            dtype=spec.dtype, **extra,
                            **{**init_kwargs(spec), **initializer_overrides})


def init(key: jax.Array, spec: Spec) -> tuple:
    """Draws the stack's params: a tuple (per layer) of tuples (per direction) of cell Params."""
    keys = jax.random.split(key, spec.num_layers * spec.num_directions)
    keys = keys.reshape(spec.num_layers, spec.num_directions, *keys.shape[1:])
    return tuple(tuple(init_cell(keys[l, d], spec, l) for d in range(spec.num_directions))
                 for l in range(spec.num_layers))


def zero_carries(spec: Spec, params: tuple, batch_shape: tuple[int, ...]) -> tuple:
    """Zero carries shaped like `apply`'s final carries."""
    return tuple(tuple(spec.cell_fns.zero_carry(p, batch_shape) for p in layer)
                 for layer in params)


def _check_params(spec: Spec, params: tuple) -> None:
    if len(params) != spec.num_layers or any(len(l) != spec.num_directions for l in params):
        got = [len(l) for l in params] if isinstance(params, (tuple, list)) else type(params)
        raise ValueError(f"layers.apply: params must hold num_layers={spec.num_layers} layers of "
                         f"{spec.num_directions} direction(s); got {got}")


def dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """Inverted dropout: zero each element with probability `rate`, scale the rest by 1/(1-rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def apply(spec: Spec, params: tuple, xs: jax.Array, *, seq_lengths: jax.Array | None = None,
          initial_carry: tuple | None = None, dropout_key: jax.Array | None = None,
          plan: Plan = Plan(), time_major: bool = False) -> tuple[jax.Array, tuple]:
    """Runs the stack.

    Args:
      spec: the stack.
      params: from `init` (or `interop.from_torch`).
      xs: [B, T, I] inputs ([T, B, I] if time_major): a jax.Array, or an array-like (NumPy,
        a torch CPU tensor), converted here.
      seq_lengths: [B] lengths in [0, T], or None.
      initial_carry: carries shaped like the returned final carries, or None for zeros
        (`interop.carry_from_torch` makes them from PyTorch's `(h_0, c_0)`).
      dropout_key: enables dropout between layers (training); None disables it.
      plan: how to run it (the default: the fused path where the cell has one, no remat).
      time_major: xs and ys are [T, B, ...], PyTorch's default layout (`batch_first=False`);
        the fused path runs time-major inside, so this adds no transpose.

    Returns:
      (ys, final_carries): ys [B, T, (proj_size or H) * directions] ([T, B, ...] if
      time_major), the last layer's outputs (zeros past each length); final_carries[layer][direction] the carry at each sequence's
      last valid step (for the backward direction: after its first element).
    """
    _check_params(spec, params)
    check_plan(spec, plan)
    layout = "[T, B, I]" if time_major else "[B, T, I]"
    xs = checks.from_tensor(xs)
    checks.check_input(xs, spec.input_size, spec.dtype, what="layers.apply xs", min_rank=3,
                       layout=layout)
    if np.ndim(xs) != 3:
        raise ValueError(f"layers.apply: xs must be {layout}, got shape {tuple(np.shape(xs))}")
    if seq_lengths is not None:
        seq_lengths = checks.from_tensor(seq_lengths)
    if initial_carry is not None:
        initial_carry = jax.tree_util.tree_map(checks.from_tensor, initial_carry)
    cell = spec.cell_fns
    x, finals = xs, []
    for l, layer in enumerate(params):
        outs, carries = [], []
        for d, p in enumerate(layer):
            carry, ys = scan.run(cell, p, x,
                                 carry=None if initial_carry is None else initial_carry[l][d],
                                 seq_lengths=seq_lengths, reverse=d == 1, unroll=plan.unroll,
                                 impl=plan.impl, remat=plan.remat, chunk_size=plan.chunk_size,
                                 matmul_dtype=plan.matmul_dtype, time_major=time_major)
            outs.append(ys)
            carries.append(carry)
        x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        if dropout_key is not None and spec.dropout > 0 and l < spec.num_layers - 1:
            x = dropout(jax.random.fold_in(dropout_key, l), spec.dropout, x)
        finals.append(tuple(carries))
    return x, tuple(finals)
