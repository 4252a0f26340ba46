"""Writes tests/golden/torch_<case>_<dtype>.npz: PyTorch's nn.LSTM / nn.GRU / nn.RNN outputs,
final states and gradients, which tests/test_interop.py checks gated_rnn against on every run
(no torch needed there).

    .venv/bin/python scripts/make_golden.py          # needs torch (pip install -e '.[torch]')

When to regenerate: only when a case is added or changed here, or the file format below changes.
Never to make a failing test pass: the files are PyTorch's answer, and a golden test that fails
means gated_rnn computes something other than PyTorch. The files do not depend on gated_rnn.

Each file holds (batch_first layout; D = directions, P = proj_size or H):
  config        JSON string: cell, input_size, hidden_size, num_layers, bidirectional,
                proj_size, packed, dtype, seed, torch version
  param.<key>   the module's state_dict (weight_ih_l0, ..., PyTorch layouts)
  x             [B, T, I] inputs
  lengths       [B] sequence lengths (packed cases only: pack_padded_sequence with
                enforce_sorted=False, unsorted lengths; outputs are zero past each length)
  y             [B, T, P * D] outputs
  h_n, c_n      [num_layers * D, B, P] and [num_layers * D, B, H] (c_n for LSTM only)
  cot_y, cot_h, cot_c   random cotangents of the same shapes
  grad.x, grad.<key>    gradients of sum(y * cot_y) + sum(h_n * cot_h) + sum(c_n * cot_c)
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden"
SEED = 0

# name -> (cell, input_size, hidden_size, num_layers, bidirectional, proj_size, batch, time,
#          lengths or None)
CASES = {
    "lstm_1layer": ("lstm", 3, 5, 1, False, 0, 3, 6, None),
    "lstm_2layer_bidir": ("lstm", 4, 4, 2, True, 0, 3, 7, None),
    "lstm_proj": ("lstm", 3, 6, 2, True, 4, 3, 5, None),
    "gru_2layer_bidir": ("gru", 5, 4, 2, True, 0, 4, 6, None),
    "rnn_tanh": ("rnn", 3, 5, 2, True, 0, 3, 8, None),
    # Unsorted lengths; the longest (8) is shorter than T (9), so outputs end in zeros.
    "lstm_packed_bidir": ("lstm", 4, 5, 2, True, 0, 4, 9, [5, 8, 2, 7]),
    "gru_packed_bidir": ("gru", 3, 6, 2, True, 0, 4, 9, [3, 9, 1, 6]),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_module(cell, input_size, hidden_size, num_layers, bidirectional, proj_size, dtype):
    kwargs = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                  bidirectional=bidirectional, batch_first=True, dtype=dtype)
    if cell == "lstm":
        return torch.nn.LSTM(proj_size=proj_size, **kwargs)
    if cell == "gru":
        return torch.nn.GRU(**kwargs)
    return torch.nn.RNN(nonlinearity="tanh", **kwargs)


def run_case(name, cell, input_size, hidden_size, num_layers, bidirectional, proj_size, batch,
             time, lengths, dtype_name):
    dtype = DTYPES[dtype_name]
    torch.manual_seed(SEED)
    module = make_module(cell, input_size, hidden_size, num_layers, bidirectional, proj_size,
                         dtype)
    x = torch.randn(batch, time, input_size, dtype=dtype, requires_grad=True)
    if lengths is None:
        y, state = module(x)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
        y_packed, state = module(packed)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, batch_first=True,
                                                      total_length=time)
    h_n, c_n = state if cell == "lstm" else (state, None)
    cot = {"y": torch.randn_like(y), "h": torch.randn_like(h_n)}
    loss = (y * cot["y"]).sum() + (h_n * cot["h"]).sum()
    if c_n is not None:
        cot["c"] = torch.randn_like(c_n)
        loss = loss + (c_n * cot["c"]).sum()
    names = [k for k, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, [x] + [p for _, p in module.named_parameters()])

    np_ = lambda t: t.detach().cpu().numpy().copy()  # noqa: E731
    config = dict(cell=cell, input_size=input_size, hidden_size=hidden_size,
                  num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                  packed=lengths is not None, dtype=dtype_name, seed=SEED,
                  torch=torch.__version__)
    arrays = {"config": np.array(json.dumps(config)), "x": np_(x), "y": np_(y),
              "h_n": np_(h_n), "cot_y": np_(cot["y"]), "cot_h": np_(cot["h"]),
              "grad.x": np_(grads[0])}
    if lengths is not None:
        arrays["lengths"] = np.array(lengths, np.int64)
    if c_n is not None:
        arrays.update({"c_n": np_(c_n), "cot_c": np_(cot["c"])})
    for key, value in module.state_dict().items():
        arrays[f"param.{key}"] = np_(value)
    for key, g in zip(names, grads[1:]):
        arrays[f"grad.{key}"] = np_(g)
    path = OUT / f"torch_{name}_{dtype_name}.npz"
    np.savez_compressed(path, **arrays)
    return path


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, case in CASES.items():
        for dtype_name in DTYPES:
            path = run_case(name, *case, dtype_name)
            total += path.stat().st_size
            print(f"wrote {path.relative_to(OUT.parent.parent)} ({path.stat().st_size} bytes)")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
