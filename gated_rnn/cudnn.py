"""LSTM through cuDNN (`jax.experimental.rnn`): the optional `impl='cudnn'` of `scan.run`.

UNTESTED ON A GPU: no GPU was available when this was written. What the tests pin, on CPU, is
the weight packing and the direction/length handling, by running the same packed weights
through `jax.experimental.rnn.lstm_ref` (the reference implementation of the cuDNN kernel)
against `scan.run`. On a GPU, `run` calls the cuDNN kernel `jax.experimental.rnn.lstm` with the
same packed weights. Benchmark it there before relying on it (`python -m benchmarks.bench`).

Limits: plain LSTM (no projection), float32, every sequence length >= 1. Our `Params`
(`x @ w_x`, one bias) map to cuDNN's PyTorch layout as `W_ih = w_x^T`, `W_hh = w_h^T`,
`b_ih = b`, `b_hh = 0`, gate blocks i, f, g, o in both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gated_rnn import lstm

_NEEDS = "impl='cudnn' needs a plain float32 LSTM (lstm, no proj_size) on a GPU"


def check(cell, params, *, reference: bool = False) -> None:
    """Raises ValueError unless `run` can take this cell and params on this backend."""
    if cell is not lstm or params.w_hr is not None:
        raise ValueError(f"{_NEEDS}; got cell {getattr(cell, '__name__', cell)!r}"
                         + (" with a projection" if cell is lstm else ""))
    if params.w_x.dtype != jnp.float32:
        raise ValueError(f"{_NEEDS}; got dtype {params.w_x.dtype.name}")
    if not reference and jax.default_backend() != "gpu":
        raise ValueError(f"{_NEEDS}; the default backend is {jax.default_backend()!r}")


def pack(params: lstm.Params) -> jax.Array:
    """The flat cuDNN weight vector of one LSTM layer, one direction."""
    return jnp.concatenate([params.w_x.T.ravel(), params.w_h.T.ravel(), params.b,
                            jnp.zeros_like(params.b)])


def run(params: lstm.Params, xs: jax.Array, carry: lstm.Carry, seq_lengths: jax.Array,
        *, reference: bool = False) -> tuple[lstm.Carry, jax.Array]:
    """One forward-direction LSTM layer: xs [B, T, I], carry [B, H], seq_lengths [B] (>= 1).

    (Reverse direction: `scan.run` reverses each sequence inside its length first.)
    `reference=True` runs `jax.experimental.rnn.lstm_ref` instead of cuDNN (any backend).
    Returns (final carry, ys [B, T, H]) with zeros past each length.
    """
    from jax.experimental import rnn as jrnn  # imported lazily: GPU-oriented module

    input_size, hidden_size = params.w_x.shape[0], params.w_h.shape[0]
    weights = pack(params)
    lengths = seq_lengths.astype(jnp.int32)
    kw = dict(seq_lengths=lengths, input_size=input_size, hidden_size=hidden_size,
              num_layers=1, dropout=0.0, bidirectional=False)
    if reference:
        w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(weights, input_size, hidden_size, 1,
                                                          False)
        ys, h, c = jrnn.lstm_ref(xs, carry.h[None], carry.c[None], w_ih, w_hh, b_ih, b_hh, **kw)
    else:
        ys, h, c = jrnn.lstm(xs, carry.h[None], carry.c[None], weights, **kw)
    return lstm.Carry(h=h[0], c=c[0]), ys
