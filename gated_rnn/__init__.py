"""gated_rnn: functional LSTM, GRU and tanh-RNN cells in JAX, exact against PyTorch.

Dimension legend used in every docstring:
  B batch, T time, I input size, H hidden size, P projected output size (LSTM proj_size),
  O output size, G number of gates (RNN 1, GRU 3, LSTM 4).

Modules (import the module, call its functions: `from gated_rnn import lstm; lstm.step`):
  rnn, lstm, gru    cells: Params, Carry, init_params, init_carry, project, recur, step
  scan              run any cell over time (masks, reverse, unroll)
  layers            multi-layer / bidirectional stacks with dropout (Spec, init, apply)
  initializers      orthogonal, Lecun, forget-gate bias, chrono, PyTorch uniform
  modules           Flax linen and NNX wrappers
  interop           PyTorch state_dict <-> params (NumPy only)
"""

from gated_rnn import checks, gru, initializers, interop, layers, lstm, rnn, scan

# `modules` (Flax) is imported on use: `from gated_rnn import modules`.
__all__ = ["checks", "gru", "initializers", "interop", "layers", "lstm", "rnn", "scan"]
__version__ = "0.1.0"
