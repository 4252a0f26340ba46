"""Writes tests/golden/torch_<case>_<dtype>.npz: PyTorch's nn.LSTM / nn.GRU / nn.RNN outputs,
final states and gradients, which tests/test_interop.py checks gated_rnn against on every run
(no torch needed there).

    .venv/bin/python scripts/make_golden.py          # needs torch (pip install -e '.[torch]')
    .venv/bin/python scripts/make_golden.py lm_lstm  # only the named cases

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

The word-language-model cases (tests/golden/torch_lm_<cell>_float32.npz, `LM_CASES`): PyTorch's
`word_language_model` example in small, `WordLM` (embedding -> nn.LSTM / nn.GRU, time-major ->
linear decoder), evaluated as the example evaluates (`lm_evaluate`: bptt chunks of a [N, B]
token batch, the hidden state carried across chunks, the loss weighted by chunk length). Each
holds config (as above, plus vocab, emb_size, bptt), param.<key> (the whole model's state dict:
encoder.weight, rnn.*, decoder.*), tokens [N, B], chunk_loss [chunks], loss (the mean),
h_n (and c_n): the final hidden state.
"""

from __future__ import annotations

import json
import pathlib
import sys

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


# name -> (cell, vocab, emb_size, hidden_size, num_layers, batch, tokens, bptt); the last
# chunk is shorter than bptt, as in the example.
LM_CASES = {
    "lm_lstm": ("LSTM", 40, 8, 12, 2, 4, 33, 7),
    "lm_gru": ("GRU", 40, 8, 12, 2, 4, 33, 7),
}


class WordLM(torch.nn.Module):
    """The word_language_model example's RNNModel, small: embedding -> RNN -> decoder."""

    def __init__(self, cell, vocab, emb_size, hidden_size, num_layers):
        super().__init__()
        self.encoder = torch.nn.Embedding(vocab, emb_size)
        self.rnn = getattr(torch.nn, cell)(emb_size, hidden_size, num_layers)  # time-major
        self.decoder = torch.nn.Linear(hidden_size, vocab)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output), hidden


def lm_evaluate(model, tokens, bptt):
    """The example's evaluate(): (mean loss, [loss per chunk], final hidden state)."""
    model.eval()
    hidden, total, chunk_losses = None, 0.0, []
    with torch.no_grad():
        for i in range(0, tokens.shape[0] - 1, bptt):
            seq_len = min(bptt, tokens.shape[0] - 1 - i)
            data, targets = tokens[i:i + seq_len], tokens[i + 1:i + 1 + seq_len]
            output, hidden = model(data, hidden)
            loss = torch.nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]),
                                                     targets.reshape(-1))
            chunk_losses.append(loss.item())
            total += seq_len * loss.item()
    return total / (tokens.shape[0] - 1), chunk_losses, hidden


def make_lm(cell, vocab, emb_size, hidden_size, num_layers, batch, num_tokens, seed=SEED):
    """A WordLM with weights wider than PyTorch's default init (so the state matters) and a
    [num_tokens, batch] token batch."""
    torch.manual_seed(seed)
    model = WordLM(cell, vocab, emb_size, hidden_size, num_layers)
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            p.uniform_(-0.6, 0.6)
    tokens = torch.randint(0, vocab, (num_tokens, batch))
    return model, tokens


def run_lm_case(name, cell, vocab, emb_size, hidden_size, num_layers, batch, num_tokens, bptt):
    model, tokens = make_lm(cell, vocab, emb_size, hidden_size, num_layers, batch, num_tokens)
    loss, chunk_losses, hidden = lm_evaluate(model, tokens, bptt)
    h_n, c_n = hidden if isinstance(hidden, tuple) else (hidden, None)
    np_ = lambda t: t.detach().cpu().numpy().copy()  # noqa: E731
    config = dict(cell=cell, vocab=vocab, emb_size=emb_size, hidden_size=hidden_size,
                  num_layers=num_layers, bptt=bptt, dtype="float32", seed=SEED,
                  torch=torch.__version__)
    arrays = {"config": np.array(json.dumps(config)), "tokens": np_(tokens),
              "chunk_loss": np.array(chunk_losses, np.float64), "loss": np.array(loss),
              "h_n": np_(h_n)}
    if c_n is not None:
        arrays["c_n"] = np_(c_n)
    for key, value in model.state_dict().items():
        arrays[f"param.{key}"] = np_(value)
    path = OUT / f"torch_{name}_float32.npz"
    np.savez_compressed(path, **arrays)
    return path


def main(names=()):
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    paths = []
    for name, case in CASES.items():
        for dtype_name in DTYPES:
            if not names or name in names:
                paths.append(run_case(name, *case, dtype_name))
    for name, case in LM_CASES.items():
        if not names or name in names:
            paths.append(run_lm_case(name, *case))
    for path in paths:
        total += path.stat().st_size
        print(f"wrote {path.relative_to(OUT.parent.parent)} ({path.stat().st_size} bytes)")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
