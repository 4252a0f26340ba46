"""Thin Flax wrappers: linen cells for `nn.RNN`, linen and NNX stacks, NNX cells for `nnx.RNN`.

A wrapper only holds params and calls the functional code; the equations live in the cells
(`rnn`, `lstm`, `gru`), the loop in `scan` / `layers`. Every name is here:
`from gated_rnn import modules; modules.LSTMCell`.

  linen     `RNNCell`, `LSTMCell`, `GRUCell` (for `nn.RNN` / `nn.Bidirectional`) and the stacks
            `RNN`, `LSTM`, `GRU` over `layers.apply`; likewise `IRNNCell`, `URLSTMCell`,
            `MinGRUCell`, `MinLSTMCell` and `IRNN`, `URLSTM`, `MinGRU`, `MinLSTM`
  nnx       `NNXRNNCell`, `NNXLSTMCell`, `NNXGRUCell` (for `nnx.RNN` / `nnx.Bidirectional`) and
            the stacks `NNXRNN`, `NNXLSTM`, `NNXGRU`; likewise `NNXIRNNCell`, ..., `NNXMinLSTM`
  convert   `to_flax` / `from_flax`: functional params <-> the modules' param trees;
            `to_flax_cell` / `from_flax_cell`: Flax's own cells' params (nn.LSTMCell,
            OptimizedLSTMCell, GRUCell, SimpleCell; linen and NNX) <-> functional params

Params are stored under the field names of the cell's `Params` (w_x, w_h, b, b_hn, w_hr), a
stack's per layer and direction ("layer0_fwd", "layer0_bwd", ...), so a checkpoint reads like
the functional params. Initialization is the functional init (`layers.init_cell` /
`layers.init`, hence the same `initializers` factories). Each class names its cell by
`CELL_TYPE` (a `layers.CellType`). The init scheme attribute is `init_scheme`
(`layers.Spec.init`), since `init` is linen's method.

The cells are drop-ins for Flax's: they take Flax's constructor keywords (`features`;
`in_features` / `hidden_features` for NNX; `dtype` for computation and `param_dtype` for
storage, with inputs of another float dtype promoted; `kernel_init`, `recurrent_kernel_init`,
`bias_init`, `carry_init`) and Flax's carries: the tuple (c, h) for the LSTM, a bare array for
the GRU and the RNN (`to_flax_carry` converts a functional Carry). The stacks compute in
`dtype`, which is also their params' dtype, and keep the functional carries.
"""

from gated_rnn.modules.convert import (from_flax, from_flax_cell, to_flax, to_flax_carry,
                                       to_flax_cell)
from gated_rnn.modules.linen import (GRU, IRNN, LSTM, RNN, URLSTM, GRUCell, IRNNCell, LSTMCell,
                                     MinGRU, MinGRUCell, MinLSTM, MinLSTMCell, RNNCell,
                                     URLSTMCell)
from gated_rnn.modules.nnx import (NNXGRU, NNXIRNN, NNXLSTM, NNXRNN, NNXURLSTM, NNXGRUCell,
                                   NNXIRNNCell, NNXLSTMCell, NNXMinGRU, NNXMinGRUCell,
                                   NNXMinLSTM, NNXMinLSTMCell, NNXRNNCell, NNXURLSTMCell)

__all__ = ["from_flax", "to_flax", "from_flax_cell", "to_flax_cell", "to_flax_carry",
           "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU",
           "NNXRNNCell", "NNXLSTMCell", "NNXGRUCell", "NNXRNN", "NNXLSTM", "NNXGRU",
           "IRNNCell", "URLSTMCell", "MinGRUCell", "MinLSTMCell",
           "IRNN", "URLSTM", "MinGRU", "MinLSTM",
           "NNXIRNNCell", "NNXURLSTMCell", "NNXMinGRUCell", "NNXMinLSTMCell",
           "NNXIRNN", "NNXURLSTM", "NNXMinGRU", "NNXMinLSTM"]
