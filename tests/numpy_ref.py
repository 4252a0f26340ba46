"""Independent NumPy (float64) transcriptions of the cell equations and of sequence semantics.

Written from REFERENCE.md's equations, not from the library code: one sequence at a time, a
plain Python loop over time, explicit slicing of each sequence's valid part.
"""

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def lstm_step(p, h, c, x):
    H = p["w_x"].shape[1] // 4
    W, U, b = p["w_x"], p["w_h"], p["b"]
    gate = lambda k: x @ W[:, k * H:(k + 1) * H] + h @ U[:, k * H:(k + 1) * H] + b[k * H:(k + 1) * H]  # noqa: E731
    i, f, g, o = sigmoid(gate(0)), sigmoid(gate(1)), np.tanh(gate(2)), sigmoid(gate(3))
    c = f * c + i * g
    h = o * np.tanh(c)
    if p.get("w_hr") is not None:
        h = h @ p["w_hr"]
    return h, c


def gru_step(p, h, x, variant="reset_after"):
    H = p["w_h"].shape[0]
    W, U, b, b_hn = p["w_x"], p["w_h"], p["b"], p["b_hn"]
    blk = lambda M, k: M[..., k * H:(k + 1) * H]  # noqa: E731
    r = sigmoid(x @ blk(W, 0) + h @ blk(U, 0) + blk(b, 0))
    z = sigmoid(x @ blk(W, 1) + h @ blk(U, 1) + blk(b, 1))
    if variant == "reset_after":
        n = np.tanh(x @ blk(W, 2) + blk(b, 2) + r * (h @ blk(U, 2) + b_hn))
        return (1 - z) * n + z * h
    h_tilde = np.tanh(x @ blk(W, 2) + (r * h) @ blk(U, 2) + blk(b, 2) + b_hn)
    return (1 - z) * h + z * h_tilde


def rnn_step(p, h, x):
    return np.tanh(x @ p["w_x"] + h @ p["w_h"] + p["b"])


def run(step, state, xs, length=None, reverse=False):
    """One sequence xs [T, I]; state a tuple of arrays; step(state, x) -> state (output state[0]).

    Returns (final_state, ys [T, out]) with zeros past `length`.
    """
    T = xs.shape[0]
    L = T if length is None else int(length)
    order = range(L - 1, -1, -1) if reverse else range(L)
    out_size = state[0].shape[-1]
    ys = np.zeros((T, out_size))
    for t in order:
        state = step(state, xs[t])
        ys[t] = state[0]
    return state, ys
