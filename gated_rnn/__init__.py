"""gated_rnn: functional LSTM, GRU and RNN cells in JAX, exact against PyTorch, and the cells
they are compared with (IRNN, UR-LSTM, minGRU, minLSTM).

Dimension legend used in every docstring:
  B batch, T time, I input size, H hidden size, P projected output size (LSTM proj_size),
  O output size, G number of gates (RNN 1, GRU 3, LSTM 4; irnn 1, urlstm 4, mingru 2,
  minlstm 3).

Modules (import the module, call its functions: `from gated_rnn import lstm; lstm.step`):
  rnn, lstm, gru    cells: Params, Carry, init_params, init_carry, project, recur, step
  irnn, urlstm      more cells: ReLU RNN with identity init; LSTM with UGI and a refine gate
  mingru, minlstm   cells linear in the state (input-only gates): parallel over time
  scan              run any cell over time (masks, reverse, unroll); fused: its fast path;
                    linear_scan: mingru/minlstm's multiply-add loop and associative scan
  trace             every step's carry and gates (`trace.run`), a look inside a cell
  layers            multi-layer / bidirectional stacks with dropout (Spec, Plan, init, apply);
                    the one registry from cell types to cells
  initializers      orthogonal, Lecun, forget-gate bias, chrono, PyTorch uniform
  modules           Flax linen (modules.linen) and NNX (modules.nnx) wrappers
  interop           PyTorch state_dict <-> params (NumPy only)

Names. A *cell type* (`layers.CellType`, the value of `layers.Spec.cell`) names a cell. A *cell*
is the module or object with the functions and the facts below (`rnn`, `lstm`,
`gru.cell(variant)`; `spec.cell_fns` for a spec): what `scan.run` takes. A *Flax cell* is a
module of `gated_rnn.modules` (`modules.LSTMCell`, ...) that wraps a cell.

The cell protocol: what `scan`, `fused`, `layers`, `modules` and `interop` read off a cell (they
never ask which cell it is):
  Params, Carry            NamedTuples. Params has w_x [I, G*H], w_h [P, G*H], b [G*H] (the
                           fused path and interop read these three; a cell with neither, as
                           mingru, may lack w_h); Carry has h [..., P].
  init_params(key, input_size, hidden_size, *, dtype, <INITIALIZERS>) -> Params
  init_carry(batch_shape, hidden_size, *, dtype) -> Carry
  zero_carry(params, batch_shape) -> Carry
  project(params, xs) -> xp          x @ w_x + b, carry-independent
  recur(params, carry, xp) -> (carry, y)
  step(params, carry, x) -> (carry, y)
  NUM_GATES                G, the gate blocks of w_x, w_h and b.
  update                   (params, carry, xp, hz) -> (carry, y), the elementwise rest of a
                           step from the column blocks of xp and of hz = carry.h @ w_h; or None
                           if the step has no such split. With it `scan.run` can take the fused
                           path (`fused.supports`); without, the plain scan.
  coefficients             optional: (params, xp) -> (a, b), each [..., H], for a step linear
                           in the state, h' = a * h + b; with it `scan.run` takes
                           `linear_scan`'s paths (fused: a multiply-add loop; parallel).
  internals                optional: (params, carry, xp) -> {gate name: [..., H]}, for `trace`.
  BLOCKS                   the column blocks `update` takes, in units of H (sum = G).
  UPDATE_READS_SUM         True if `update` reads each block pair only as xp + hz.
  INITIALIZERS             the initializer keywords of `init_params` (`layers.Init.TORCH` sets
                           each of them).
  SUPPORTS_PROJ            True if init_params and init_carry take proj_size (w_hr: [H, P]).
  forget_bias_init(value), chrono_bias_init(max_len)
                           the bias initializer of `layers.Init.FORGET_BIAS` / `CHRONO`, or
                           None (no gate keeps the state).
  TORCH_NAME               PyTorch's mode name ("RNN_TANH", "LSTM", "GRU"), or None if PyTorch
                           has no such cell (interop refuses it).
  TORCH_HH_BIASES          ((field, gate), ...): Params fields that hold gate block `gate` of
                           PyTorch's bias_hh apart (GRU b_hn); every other block of bias_ih and
                           bias_hh is summed into b.
A new cell: one module with these names, a `layers.CellType` member and its line in the
registry `layers._CELLS` (and its tests; `tests/test_protocol.py` runs a cell defined outside the
package through `scan.run`).
"""

from gated_rnn import (checks, gru, initializers, interop, irnn, layers, linear_scan, lstm,
                       mingru, minlstm, rnn, scan, trace, urlstm)

# `modules` (Flax) is imported on use: `from gated_rnn import modules`.
__all__ = ["checks", "gru", "initializers", "interop", "irnn", "layers", "linear_scan", "lstm",
           "mingru", "minlstm", "rnn", "scan", "trace", "urlstm"]
__version__ = "0.1.0"
