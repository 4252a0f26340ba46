"""Stacks of recurrent layers, like PyTorch's `nn.LSTM` / `nn.GRU` / `nn.RNN`.

A `Spec` (frozen, hashable: usable as a `jax.jit` static argument) describes the stack;
`init(key, spec)` draws its params and `apply(spec, params, xs)` runs it:

    spec = layers.Spec(cell="lstm", input_size=8, hidden_size=64, num_layers=2,
                       bidirectional=True, dropout=0.1)
    params = layers.init(key, spec)         # params[layer][direction] -> cell Params
    ys, finals = layers.apply(spec, params, xs, seq_lengths=lengths, dropout_key=k)

Layer l > 0 reads the concatenated [forward, backward] outputs of layer l - 1. Dropout acts on
each layer's outputs except the last layer's, never on the recurrent path (as in PyTorch), and
only when a `dropout_key` is given.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gated_rnn import checks, gru, initializers, lstm, rnn, scan


class CellType(enum.Enum):
    RNN = "rnn"
    LSTM = "lstm"
    GRU = "gru"


class Init(enum.Enum):
    """Initialization schemes (kernels and biases; see `initializers`).

    DEFAULT: orthogonal recurrent kernels (per gate), Lecun-normal input kernels, zero biases.
    FORGET_BIAS: DEFAULT plus a bias of `forget_bias` towards keeping the state: the LSTM forget
      gate (Jozefowicz et al. 2015); the GRU update gate in its "keep" direction; nothing for
      the RNN, which has no gate.
    CHRONO: DEFAULT plus chrono biases (Tallec & Ollivier 2018) for `T_max = chrono_max_len`:
      LSTM `b_f ~ log U[1, T_max - 1]`, `b_i = -b_f`; GRU the update gate, keep direction.
      Nothing for the RNN.
    TORCH: PyTorch's default, every weight and bias `U(-1/sqrt(H), 1/sqrt(H))` (a summed bias is
      one draw, not the sum of PyTorch's two).
    """

    DEFAULT = "default"
    FORGET_BIAS = "forget_bias"
    CHRONO = "chrono"
    TORCH = "torch"


def _enum(kind: type[enum.Enum], value: Any, field: str) -> enum.Enum:
    try:
        return kind(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        raise ValueError(f"{field}: unknown value {value!r}; valid: "
                         f"{[v.value for v in kind]}") from None


@dataclasses.dataclass(frozen=True)
class Spec:
    """A stack of recurrent layers. Strings are accepted for the enum fields."""

    cell: CellType
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    gru_variant: gru.Variant = gru.Variant.RESET_AFTER
    init: Init = Init.DEFAULT
    forget_bias: float = 1.0
    chrono_max_len: Optional[int] = None
    proj_size: int = 0
    unroll: int = 1
    dtype: Any = jnp.float32
    # Execution options (same numbers, different speed / memory; see scan.run and README
    # "Performance"): loop implementation, rematerialization, chunk length, matmul dtype.
    impl: scan.Impl = scan.Impl.AUTO
    remat: bool = False
    chunk_size: Optional[int] = None
    matmul_dtype: Any = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("cell", _enum(CellType, self.cell, "cell"))
        set_("gru_variant", _enum(gru.Variant, self.gru_variant, "gru_variant"))
        set_("init", _enum(Init, self.init, "init"))
        set_("dtype", jnp.dtype(self.dtype))
        set_("impl", _enum(scan.Impl, self.impl, "impl"))
        # Raises for e.g. impl='fused' with a reset-before GRU.
        resolved = scan.resolve_impl(self.cell_fns, self.impl)
        if self.matmul_dtype is not None:
            set_("matmul_dtype", jnp.dtype(self.matmul_dtype))
            if resolved is scan.Impl.SCAN:
                raise ValueError(f"matmul_dtype={self.matmul_dtype.name!r} needs the fused "
                                 f"implementation; got impl={self.impl.value!r} for cell "
                                 f"{self.cell.value!r}")
        if not isinstance(self.remat, (bool, np.bool_)):
            raise ValueError(f"remat: expected a bool, got {self.remat!r}")
        if self.chunk_size is not None and (
                not isinstance(self.chunk_size, (int, np.integer))
                or isinstance(self.chunk_size, bool) or self.chunk_size < 1):
            raise ValueError(f"chunk_size: expected None or an integer >= 1, got "
                             f"{self.chunk_size!r}")
        for name in ("input_size", "hidden_size", "num_layers", "unroll"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {self.dropout!r}")
        if self.proj_size < 0 or (self.proj_size and self.cell is not CellType.LSTM):
            raise ValueError(f"proj_size: expected 0, or > 0 for an LSTM only; got "
                             f"{self.proj_size!r} for cell {self.cell.value!r}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: must be < hidden_size={self.hidden_size} (as in "
                             f"PyTorch), got {self.proj_size}")
        if self.init is Init.CHRONO and (self.chrono_max_len is None or self.chrono_max_len < 3):
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
        """The cell module (or GRU cell object) with project / recur / step / init functions."""
        if self.cell is CellType.GRU:
            return gru.cell(self.gru_variant)
        return {CellType.RNN: rnn, CellType.LSTM: lstm}[self.cell]

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size


def output_size(spec: Spec) -> int:
    """Features of `apply`'s output: (proj_size or H) * directions."""
    return spec.output_size


def _keep_sign(spec: Spec) -> float:
    # RESET_AFTER keeps the state with z (sigma(+b) -> keep); RESET_BEFORE takes it with z.
    return 1.0 if spec.gru_variant is gru.Variant.RESET_AFTER else -1.0


def init_kwargs(spec: Spec) -> dict:
    """The initializer keyword arguments of the spec's `cell.init_params`."""
    h = spec.hidden_size
    if spec.init is Init.TORCH:
        u = initializers.torch_default(h)
        kwargs = dict(kernel_init=u, recurrent_init=u, bias_init=u)
        if spec.cell is CellType.GRU:
            kwargs["candidate_bias_init"] = u
        if spec.cell is CellType.LSTM:
            kwargs["proj_init"] = u
        return kwargs
    num_gates = {CellType.RNN: rnn.NUM_GATES, CellType.LSTM: lstm.NUM_GATES,
                 CellType.GRU: gru.NUM_GATES}[spec.cell]
    kwargs = dict(kernel_init=initializers.lecun_normal(),
                  recurrent_init=initializers.orthogonal_gates(num_gates),
                  bias_init=initializers.zeros)
    if spec.init is Init.FORGET_BIAS:
        if spec.cell is CellType.LSTM:
            kwargs["bias_init"] = initializers.forget_gate_bias(spec.forget_bias)
        elif spec.cell is CellType.GRU:
            kwargs["bias_init"] = initializers.gate_constant(
                gate=1, num_gates=3, value=_keep_sign(spec) * spec.forget_bias)
    elif spec.init is Init.CHRONO:
        if spec.cell is CellType.LSTM:
            kwargs["bias_init"] = initializers.chrono_lstm(spec.chrono_max_len)
        elif spec.cell is CellType.GRU:
            kwargs["bias_init"] = initializers.chrono_gru(spec.chrono_max_len,
                                                          keep_gate_sign=_keep_sign(spec))
    return kwargs


def init_cell(key: jax.Array, spec: Spec, layer: int) -> Any:
    """Params of one direction of layer `layer`."""
    extra = {"proj_size": spec.proj_size} if spec.cell is CellType.LSTM else {}
    return spec.cell_fns.init_params(key, spec.layer_input_size(layer), spec.hidden_size,
                                     dtype=spec.dtype, **extra, **init_kwargs(spec))


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
          initial_carry: tuple | None = None,
          dropout_key: jax.Array | None = None) -> tuple[jax.Array, tuple]:
    """Runs the stack.

    Args:
      spec: the stack.
      params: from `init` (or `interop.from_torch`).
      xs: [B, T, I] inputs.
      seq_lengths: [B] lengths in [0, T], or None.
      initial_carry: carries shaped like the returned final carries, or None for zeros.
      dropout_key: enables dropout between layers (training); None disables it.

    Returns:
      (ys, final_carries): ys [B, T, (proj_size or H) * directions], the last layer's outputs
      (zeros past each length); final_carries[layer][direction] the carry at each sequence's
      last valid step (for the backward direction: after its first element).
    """
    _check_params(spec, params)
    checks.check_input(xs, spec.input_size, spec.dtype, what="layers.apply xs", min_rank=3,
                       layout="[B, T, I]")
    if np.ndim(xs) != 3:
        raise ValueError(f"layers.apply: xs must be [B, T, I], got shape {tuple(np.shape(xs))}")
    cell = spec.cell_fns
    x, finals = xs, []
    for l, layer in enumerate(params):
        outs, carries = [], []
        for d, p in enumerate(layer):
            carry, ys = scan.run(cell, p, x,
                                 carry=None if initial_carry is None else initial_carry[l][d],
                                 seq_lengths=seq_lengths, reverse=d == 1, unroll=spec.unroll,
                                 impl=spec.impl, remat=spec.remat, chunk_size=spec.chunk_size,
                                 matmul_dtype=spec.matmul_dtype)
            outs.append(ys)
            carries.append(carry)
        x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        if dropout_key is not None and spec.dropout > 0 and l < spec.num_layers - 1:
            x = dropout(jax.random.fold_in(dropout_key, l), spec.dropout, x)
        finals.append(tuple(carries))
    return x, tuple(finals)
