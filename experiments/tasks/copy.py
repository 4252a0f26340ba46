"""Copy memory task (Arjovsky, Shah & Bengio 2016), optionally with a variable delay.

Alphabet: 0 blank, 1..8 data symbols, 9 delimiter. One sequence has T + 20 steps:

    input   s1 .. s10 | T-1 blanks | delimiter | 10 blanks
    target  T+10 blanks                        | s1 .. s10

The 10 data symbols are drawn uniformly from 1..8. The model reads one-hot inputs (I = 10) and
predicts a class at every step (O = 9: blank and the 8 data symbols; the delimiter is never a
target). Loss: mean cross-entropy over all T + 20 steps and the batch.

Memoryless baseline: a model that predicts blank with certainty outside the recall window and
a uniform guess over the 8 symbols inside it scores `10 ln 8 / (T + 20)`.

Variable delay (Henaff, Szlam & LeCun 2016): the delimiter comes after k blanks, k uniform in
{0, ..., T-1} per sequence (k = T-1 is the fixed task), and the recall window is the 10 steps
right after it; the remaining T-1-k steps are blanks in input and target. The total length stays
T + 20, so batches are rectangular, and a cell cannot solve it by counting steps from the start:
it has to watch for the delimiter. The baseline is unchanged (the recall window is still 10
steps, and a memoryless model can see the delimiter).

Metrics: `accuracy`, the fraction of the 10 recalled symbols predicted right (chance 1/8);
`seq_accuracy`, the fraction of sequences with all 10 right; `normalized_loss` = loss / baseline.
Solved: accuracy >= 0.99.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from experiments import checks, tasks

NUM_RECALL = 10  # symbols to copy
NUM_DATA = 8     # data symbols 1..8
BLANK, DELIMITER = 0, 9
INPUT_SIZE = 10   # one-hot: blank, 8 symbols, delimiter
OUTPUT_SIZE = 9   # classes: blank and the 8 symbols
SOLVED_ACCURACY = 0.99


def baseline(seq_len: int) -> float:
    """Cross-entropy of the memoryless predictor: `10 ln 8 / (T + 20)`."""
    return NUM_RECALL * math.log(NUM_DATA) / (seq_len + 2 * NUM_RECALL)


def make(*, seq_len: int, variable_delay: bool = False) -> tasks.Task:
    """The copy task with delay T = seq_len (input length T + 20).

    Args:
      seq_len: T >= 1, the number of steps from the last data symbol to the delimiter.
      variable_delay: if True, the delimiter's position varies per sequence (see module doc).

    Returns:
      A Task with readout at every step.
    """
    seq_len = checks.integer("seq_len", seq_len)
    if not isinstance(variable_delay, bool):
        raise ValueError(f"task.variable_delay: expected a bool, got {variable_delay!r}")
    length = seq_len + 2 * NUM_RECALL
    base = baseline(seq_len)

    def sample(key: jax.Array, batch_size: int) -> tasks.Batch:
        """Draws a batch: inputs [B, T+20, 10] one-hot, targets [B, T+20] class ids."""
        k_symbols, k_delay = jax.random.split(key)
        symbols = jax.random.randint(k_symbols, (batch_size, NUM_RECALL), 1, NUM_DATA + 1)
        if variable_delay:
            blanks = jax.random.randint(k_delay, (batch_size,), 0, seq_len)
        else:
            blanks = jnp.full((batch_size,), seq_len - 1)
        delimiter_at = (NUM_RECALL + blanks)[:, None]                      # [B, 1]
        t = jnp.arange(length)[None, :]                                    # [1, T+20]
        tokens = jnp.zeros((batch_size, length), jnp.int32).at[:, :NUM_RECALL].set(symbols)
        tokens = jnp.where(t == delimiter_at, DELIMITER, tokens)
        offset = t - delimiter_at - 1                                      # index into symbols
        in_window = (offset >= 0) & (offset < NUM_RECALL)
        recalled = jnp.take_along_axis(symbols, jnp.clip(offset, 0, NUM_RECALL - 1), axis=1)
        targets = jnp.where(in_window, recalled, BLANK).astype(jnp.int32)
        inputs = jax.nn.one_hot(tokens, INPUT_SIZE, dtype=jnp.float32)
        return tasks.Batch(inputs=inputs, targets=targets)

    def loss_and_metrics(logits: jax.Array, batch: tasks.Batch) -> tuple[jax.Array, dict]:
        """Mean cross-entropy over all steps; logits [B, T+20, 9], batch.targets [B, T+20]."""
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(log_probs, batch.targets[..., None], axis=-1)[..., 0]
        loss = jnp.mean(nll)
        # Data symbols are never blank, so the recall window is where the target is not.
        recall = batch.targets != BLANK
        correct = jnp.argmax(logits, axis=-1) == batch.targets
        accuracy = jnp.sum(correct & recall) / jnp.sum(recall)
        seq_accuracy = jnp.mean(jnp.all(correct | ~recall, axis=1))
        return loss, {"loss": loss, "normalized_loss": loss / base, "accuracy": accuracy,
                      "seq_accuracy": seq_accuracy}

    def solved(metrics: dict):
        return metrics["accuracy"] >= SOLVED_ACCURACY

    return tasks.Task(
        name="copy", seq_len=seq_len, length=length, input_size=INPUT_SIZE,
        output_size=OUTPUT_SIZE, readout=tasks.Readout.ALL, baseline=base,
        criterion=f"recall accuracy (over the 10 recalled symbols) >= {SOLVED_ACCURACY}",
        sample=sample, loss_and_metrics=loss_and_metrics, solved=solved)
