"""Adding problem: two input channels, predict the sum of the two marked values at the end.

Two forms (`form=`):

- "arjovsky" (default; Arjovsky, Shah & Bengio 2016): T steps; channel 0 holds values
  U[0, 1]; channel 1 is 1 at exactly two positions, one drawn uniformly in the first half
  [0, T//2) and one in the second half [T//2, T), and 0 elsewhere. Target: the sum of the two
  marked values. The best constant predictor (1, the mean) scores the variance of the sum,
  2/12 = 1/6 (the papers' 0.167).
- "hochreiter" (Hochreiter & Schmidhuber 1997, experiment 4): values U[-1, 1]; the first marker
  among the first 10 positions, the second among the first T/2 - 1 positions (distinct from the
  first); the marker channel is -1 at the first and last positions (unless marked) and 0
  elsewhere; when the first position is marked, its value is set to 0 (their rule for x1, which
  we apply to either marker, so the first step never carries a value). Target
  0.5 + (x1 + x2) / 4. Baseline: the target's variance, exactly
  (Var x1 + Var x2) / 16 = (2 - P(x1 at 0) - P(x2 at 0)) / 48, with P(x1 at 0) = 1/10 and
  P(x2 at 0) = 0.9 / (T/2 - 2): 0.03919 at T = 100 (the naive 1/24 = 0.04167 ignores the zeroed
  first step). Their sequences had random lengths in [T, T + T/10]; ours all have T steps, so
  batches are rectangular.

Loss: MSE of the single output read at the last step. Metrics: `mse`, `normalized_loss`
(= MSE / baseline) and `accuracy`, the fraction of sequences with |error| < 0.04 (Hochreiter &
Schmidhuber's "correct" rule).

Solved, arjovsky: MSE <= 0.01, i.e. 6% of the baseline, an RMS error of 0.1 against the sum's
standard deviation of 0.41: the cell must have stored both values, which is out of reach for a
model that remembers only one (its best MSE is Var(one value) = 1/12 = 0.083). hochreiter:
accuracy >= 0.99 on the eval batch, their own criterion of |error| < 0.04 per sequence (they
asked for at most 1 wrong in 2560, which needs a larger eval batch than ours by default).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments import checks, tasks

FORMS = ("arjovsky", "hochreiter")
INPUT_SIZE = 2    # value, marker
OUTPUT_SIZE = 1
TOLERANCE = 0.04  # |error| below this counts as correct
SOLVED_MSE = 0.01
SOLVED_ACCURACY = 0.99
NUM_FIRST = 10    # hochreiter: first marker among the first 10 positions


def _num_first(seq_len: int) -> int:
    # Short smoke sequences cannot hold 10 candidate positions inside the first T/2 - 1.
    return min(NUM_FIRST, seq_len // 2 - 1)


def baseline(seq_len: int, form: str = "arjovsky") -> float:
    """Variance of the target: the MSE of the best constant predictor."""
    if form == "arjovsky":
        return 2.0 / 12.0
    # Var U[-1, 1] = 1/3, and a marked first position holds 0: x1 is there with probability
    # 1/n1; x2 (uniform over the T/2 - 2 positions left) when x1 is not.
    p_first_zero = 1.0 / _num_first(seq_len)
    p_second_zero = (1.0 - p_first_zero) / (seq_len // 2 - 2)
    return (2.0 - p_first_zero - p_second_zero) / 3.0 / 16.0


def make(*, seq_len: int, form: str = "arjovsky") -> tasks.Task:
    """The adding problem with T = seq_len steps.

    Args:
      seq_len: T, sequence length (>= 2 for arjovsky, >= 6 for hochreiter).
      form: "arjovsky" or "hochreiter" (see the module doc).

    Returns:
      A Task with readout at the last step.
    """
    checks.one_of("task.form", form, FORMS, "adding form")
    seq_len = checks.integer("seq_len", seq_len, 2 if form == "arjovsky" else 6)
    half = seq_len // 2
    base = baseline(seq_len, form)

    def sample(key: jax.Array, batch_size: int) -> tasks.Batch:
        """Draws a batch: inputs [B, T, 2] (value, marker), targets [B]."""
        k_values, k_first, k_second = jax.random.split(key, 3)
        shape = (batch_size, seq_len)
        t = jnp.arange(seq_len)[None, :]
        if form == "arjovsky":
            values = jax.random.uniform(k_values, shape, jnp.float32, 0.0, 1.0)
            first = jax.random.randint(k_first, (batch_size, 1), 0, half)
            second = jax.random.randint(k_second, (batch_size, 1), half, seq_len)
            marked = (t == first) | (t == second)
            markers = marked.astype(jnp.float32)
        else:
            values = jax.random.uniform(k_values, shape, jnp.float32, -1.0, 1.0)
            first = jax.random.randint(k_first, (batch_size, 1), 0, _num_first(seq_len))
            # Uniform over the first T/2 - 1 positions except `first`: draw among one fewer
            # and step over it.
            second = jax.random.randint(k_second, (batch_size, 1), 0, half - 2)
            second = second + (second >= first)
            marked = (t == first) | (t == second)
            ends = (t == 0) | (t == seq_len - 1)
            markers = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0)).astype(jnp.float32)
            values = jnp.where(marked & (t == 0), 0.0, values)
        total = jnp.sum(jnp.where(marked, values, 0.0), axis=1)
        targets = total if form == "arjovsky" else 0.5 + total / 4.0
        inputs = jnp.stack([values, markers], axis=-1)
        return tasks.Batch(inputs=inputs, targets=targets.astype(jnp.float32))

    def loss_and_metrics(outputs: jax.Array, batch: tasks.Batch) -> tuple[jax.Array, dict]:
        """MSE; outputs [B, 1] (the readout at the last step), batch.targets [B]."""
        error = outputs[:, 0] - batch.targets
        mse = jnp.mean(jnp.square(error))
        accuracy = jnp.mean(jnp.abs(error) < TOLERANCE)
        return mse, {"loss": mse, "mse": mse, "normalized_loss": mse / base,
                     "accuracy": accuracy}

    if form == "arjovsky":
        criterion = f"MSE <= {SOLVED_MSE} (6% of the baseline 1/6)"
        solved = lambda metrics: metrics["mse"] <= SOLVED_MSE  # noqa: E731
    else:
        criterion = (f"accuracy (fraction of sequences with |error| < {TOLERANCE}) >= "
                     f"{SOLVED_ACCURACY}")
        solved = lambda metrics: metrics["accuracy"] >= SOLVED_ACCURACY  # noqa: E731

    return tasks.Task(
        name="adding", seq_len=seq_len, length=seq_len, input_size=INPUT_SIZE,
        output_size=OUTPUT_SIZE, readout=tasks.Readout.LAST, baseline=base,
        criterion=criterion, sample=sample, loss_and_metrics=loss_and_metrics, solved=solved)
