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


def relu_rnn_step(p, h, x):
    """nn.RNN(nonlinearity="relu") and the IRNN (Le et al. 2015): h' = relu(W x + U h + b)."""
    return np.maximum(x @ p["w_x"] + h @ p["w_h"] + p["b"], 0.0)


def urlstm_step(p, h, c, x):
    """UR-LSTM (Gu et al. 2020; REFERENCE.md §8), gates f, r, u, o and the shared b_f."""
    H = p["w_h"].shape[0]
    W, U, b = p["w_x"], p["w_h"], p["b"]
    pre = lambda k: x @ W[:, k * H:(k + 1) * H] + h @ U[:, k * H:(k + 1) * H] + b[k * H:(k + 1) * H]  # noqa: E731
    f = sigmoid(pre(0) + p["b_f"])
    r = sigmoid(pre(1) - p["b_f"])
    u = np.tanh(pre(2))
    o = sigmoid(pre(3))
    g = r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2
    c = g * c + (1 - g) * u
    return o * np.tanh(c), c


def _g(v):
    """Feng et al. 2024: g(v) = v + 0.5 for v >= 0, sigmoid(v) below."""
    return np.where(v >= 0, v + 0.5, sigmoid(v))


def mingru_step(p, h, x):
    """minGRU (Feng et al. 2024), blocks z, h~: h' = (1 - z) h + z g(W_h x + b_h)."""
    H = p["b"].shape[0] // 2
    k = x @ p["w_x"] + p["b"]
    z = sigmoid(k[..., :H])
    return (1 - z) * h + z * _g(k[..., H:])


def minlstm_step(p, h, x):
    """minLSTM (Feng et al. 2024), blocks f, i, h~: h' = f/(f+i) h + i/(f+i) g(W_h x + b_h)."""
    H = p["b"].shape[0] // 3
    k = x @ p["w_x"] + p["b"]
    f, i = sigmoid(k[..., :H]), sigmoid(k[..., H:2 * H])
    return f / (f + i) * h + i / (f + i) * _g(k[..., 2 * H:])
