"""Pins the task definitions: batch layout against the published definitions (checked in NumPy),
determinism per key, the metrics, and each baseline against a Monte-Carlo estimate of the
memoryless predictor's loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tasks
from experiments.tasks import adding, copy


def _sample(task, key, batch_size):
    # One compiled program instead of op-by-op dispatch: keeps the suite fast.
    return jax.jit(task.sample, static_argnums=1)(key, batch_size)


def _loss(task, outputs, batch):
    return jax.jit(task.loss_and_metrics)(outputs, batch)


def _tokens(batch):
    inputs = np.asarray(batch.inputs)
    np.testing.assert_array_equal(inputs.sum(-1), 1.0)  # one-hot
    return inputs.argmax(-1)


def test_copy_fixed_delay_layout(key):
    seq_len, batch_size = 7, 64
    task = copy.make(seq_len=seq_len)
    batch = _sample(task, key, batch_size)
    assert batch.inputs.shape == (batch_size, seq_len + 20, 10)
    assert batch.inputs.dtype == jnp.float32 and batch.targets.dtype == jnp.int32
    tokens, targets = _tokens(batch), np.asarray(batch.targets)
    symbols = tokens[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    assert len(np.unique(symbols)) == 8  # all 8 data symbols occur
    # T-1 blanks, the delimiter (9), 10 blanks.
    np.testing.assert_array_equal(tokens[:, 10:seq_len + 9], 0)
    np.testing.assert_array_equal(tokens[:, seq_len + 9], 9)
    np.testing.assert_array_equal(tokens[:, seq_len + 10:], 0)
    # Target: T+10 blanks, then the 10 symbols in order.
    np.testing.assert_array_equal(targets[:, :seq_len + 10], 0)
    np.testing.assert_array_equal(targets[:, seq_len + 10:], symbols)


def test_copy_variable_delay_layout(key):
    seq_len, batch_size = 30, 256
    task = copy.make(seq_len=seq_len, variable_delay=True)
    batch = _sample(task, key, batch_size)
    tokens, targets = _tokens(batch), np.asarray(batch.targets)
    assert tokens.shape == (batch_size, seq_len + 20)
    delimiters = []
    for b in range(batch_size):
        (d,) = np.flatnonzero(tokens[b] == 9)
        assert 10 <= d <= seq_len + 9
        delimiters.append(d)
        expected_tokens = np.zeros(seq_len + 20, int)
        expected_tokens[:10], expected_tokens[d] = tokens[b, :10], 9
        np.testing.assert_array_equal(tokens[b], expected_tokens)
        expected_targets = np.zeros(seq_len + 20, int)
        expected_targets[d + 1:d + 11] = tokens[b, :10]
        np.testing.assert_array_equal(targets[b], expected_targets)
    # The delay covers its whole range {0..T-1} blanks (256 draws of 30 values).
    assert min(delimiters) == 10 and max(delimiters) == seq_len + 9


def test_same_key_same_batch(key):
    for task in [copy.make(seq_len=20, variable_delay=True), adding.make(seq_len=20),
                 adding.make(seq_len=20, form="hochreiter")]:
        a, b = _sample(task, key, 8), _sample(task, key, 8)
        c = _sample(task, jax.random.fold_in(key, 1), 8)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
        assert not np.array_equal(a.inputs, c.inputs)


def test_copy_baseline_formula():
    # REFERENCE.md §4: 10 ln 8 / (T + 20).
    for seq_len, published in [(100, 0.173), (200, 0.095), (500, 0.040), (1000, 0.020)]:
        assert copy.make(seq_len=seq_len).baseline == pytest.approx(published, abs=5e-4)
    assert copy.baseline(100) == pytest.approx(10 * math.log(8) / 120, rel=1e-12)


@pytest.mark.parametrize("variable_delay", [False, True])
def test_copy_baseline_by_monte_carlo(key, variable_delay):
    """The memoryless predictor (blank outside the recall window, uniform over the 8 symbols in
    it; the window located from the inputs' delimiter) scores the baseline, with chance
    accuracy 1/8."""
    seq_len, batch_size = 40, 2000
    task = copy.make(seq_len=seq_len, variable_delay=variable_delay)
    batch = _sample(task, key, batch_size)
    tokens = _tokens(batch)
    t = np.arange(seq_len + 20)[None, :]
    delimiter = np.argmax(tokens == 9, axis=1)[:, None]
    window = (t > delimiter) & (t <= delimiter + 10)
    logits = np.where(window[..., None], np.r_[-1e9, np.zeros(8)], np.r_[0.0, np.full(8, -1e9)])
    loss, metrics = _loss(task, jnp.asarray(logits, jnp.float32), batch)
    assert float(loss) == pytest.approx(task.baseline, rel=1e-5)
    assert float(metrics["normalized_loss"]) == pytest.approx(1.0, rel=1e-5)
    # argmax of a tie picks symbol 1: right with probability 1/8 (20,000 draws, 4.6 sigma).
    assert float(metrics["accuracy"]) == pytest.approx(1 / 8, abs=0.011)
    assert float(metrics["seq_accuracy"]) == 0.0


def test_copy_metrics_on_known_predictions(key):
    task = copy.make(seq_len=10)
    batch = _sample(task, key, 4)
    targets = np.asarray(batch.targets)
    perfect = 50.0 * np.eye(9)[targets]
    loss, m = _loss(task, jnp.asarray(perfect, jnp.float32), batch)
    assert float(loss) < 1e-6 and float(m["accuracy"]) == 1.0 and float(m["seq_accuracy"]) == 1.0
    # One wrong recalled symbol in sequence 0: 39/40 symbols right, 3/4 sequences all right.
    wrong = targets.copy()
    wrong[0, -1] = wrong[0, -1] % 8 + 1
    _, m = _loss(task, jnp.asarray(50.0 * np.eye(9)[wrong], jnp.float32), batch)
    assert float(m["accuracy"]) == pytest.approx(39 / 40)
    assert float(m["seq_accuracy"]) == pytest.approx(3 / 4)
    assert bool(task.solved({"accuracy": jnp.float32(0.99)}))
    assert not bool(task.solved({"accuracy": jnp.float32(0.989)}))
    # Elementwise over seeds.
    np.testing.assert_array_equal(task.solved({"accuracy": np.array([0.5, 1.0])}), [False, True])


def test_adding_arjovsky_layout(key):
    seq_len, batch_size = 21, 512
    batch = _sample(adding.make(seq_len=seq_len), key, batch_size)
    inputs, targets = np.asarray(batch.inputs), np.asarray(batch.targets)
    assert inputs.shape == (batch_size, seq_len, 2) and targets.shape == (batch_size,)
    values, markers = inputs[..., 0], inputs[..., 1]
    assert values.min() >= 0.0 and values.max() < 1.0
    assert set(np.unique(markers)) == {0.0, 1.0}
    half = seq_len // 2
    np.testing.assert_array_equal(markers[:, :half].sum(1), 1)  # one marker in each half
    np.testing.assert_array_equal(markers[:, half:].sum(1), 1)
    np.testing.assert_allclose(targets, (values * markers).sum(1), rtol=1e-6)
    # Both markers range over their whole half.
    first, second = markers[:, :half].argmax(1), markers[:, half:].argmax(1) + half
    assert set(first) == set(range(half)) and set(second) == set(range(half, seq_len))


def test_adding_hochreiter_layout(key):
    seq_len, batch_size = 40, 512
    batch = _sample(adding.make(seq_len=seq_len, form="hochreiter"), key, batch_size)
    inputs, targets = np.asarray(batch.inputs), np.asarray(batch.targets)
    values, markers = inputs[..., 0], inputs[..., 1]
    assert values.min() >= -1.0 and values.max() <= 1.0
    marked = markers == 1.0
    np.testing.assert_array_equal(marked.sum(1), 2)
    positions = np.sort(np.argwhere(marked)[:, 1].reshape(batch_size, 2), axis=1)
    # One among the first 10; both among the first T/2 - 1; the other in [0, T/2 - 1).
    assert (positions[:, 0] < 10).all() and (positions[:, 1] < seq_len // 2 - 1).all()
    # -1 at both ends unless marked, 0 elsewhere.
    np.testing.assert_array_equal(markers[:, -1], -1.0)
    np.testing.assert_array_equal(markers[:, 0], np.where(marked[:, 0], 1.0, -1.0))
    assert (markers[:, 1:-1] >= 0).all()
    # A marked first step carries the value 0.
    np.testing.assert_array_equal(values[marked[:, 0], 0], 0.0)
    assert marked[:, 0].any()
    np.testing.assert_allclose(targets, 0.5 + (values * marked).sum(1) / 4, rtol=1e-6)


@pytest.mark.parametrize("form, constant", [("arjovsky", 1.0), ("hochreiter", 0.5)])
def test_adding_baseline_by_monte_carlo(key, form, constant):
    """The best memoryless predictor is the constant mean target; its MSE is the baseline."""
    task = adding.make(seq_len=24, form=form)
    batch = _sample(task, key, 200_000)
    targets = np.asarray(batch.targets, np.float64)
    assert targets.mean() == pytest.approx(constant, abs=3e-3)
    mse = np.mean((targets - constant) ** 2)
    # Standard errors: arjovsky 4.4e-4, hochreiter 1.1e-4.
    tol = 2e-3 if form == "arjovsky" else 5e-4
    assert mse == pytest.approx(task.baseline, abs=tol)
    outputs = jnp.full((targets.shape[0], 1), constant, jnp.float32)
    loss, metrics = _loss(task, outputs, batch)
    assert float(loss) == pytest.approx(mse, rel=1e-4)
    assert float(metrics["normalized_loss"]) == pytest.approx(mse / task.baseline, rel=1e-4)
    if form == "arjovsky":
        assert task.baseline == pytest.approx(1 / 6, rel=1e-12)
    else:  # A marked first step holds 0 (x1: 1 time in 10; x2: 0.9/10): not the naive 1/24.
        assert task.baseline == pytest.approx((2 - 0.1 - 0.09) / 48, rel=1e-12)
        assert abs(mse - 1 / 24) > 8 * tol


def test_adding_metrics_and_solved(key):
    task = adding.make(seq_len=10)
    batch = _sample(task, key, 100)
    targets = np.asarray(batch.targets)[:, None]
    for offset, accuracy in [(0.0, 1.0), (0.03, 1.0), (0.05, 0.0)]:
        _, m = _loss(task, jnp.asarray(targets + offset, jnp.float32), batch)
        assert float(m["accuracy"]) == accuracy
        assert float(m["mse"]) == pytest.approx(offset**2, abs=1e-6)
    assert bool(task.solved({"mse": jnp.float32(0.01)}))
    assert not bool(task.solved({"mse": jnp.float32(0.0101)}))
    hochreiter = adding.make(seq_len=10, form="hochreiter")
    assert bool(hochreiter.solved({"accuracy": 0.99})) and not bool(
        hochreiter.solved({"accuracy": 0.98}))


def test_task_registry_and_bad_input():
    assert set(tasks.TASKS) == {"copy", "adding"}
    assert tasks.make("copy", seq_len=3).readout is tasks.Readout.ALL
    assert tasks.make("adding", seq_len=3).readout == "last"
    with pytest.raises(ValueError, match=r"unknown task 'cpy'; valid: 'adding', 'copy'$"):
        tasks.make("cpy", seq_len=10)
    with pytest.raises(ValueError, match="seq_len"):
        copy.make(seq_len=0)
    with pytest.raises(ValueError, match="form.*hochreiter"):
        adding.make(seq_len=10, form="hochreiter1997")
    with pytest.raises(ValueError, match="seq_len: expected an integer >= 6"):
        adding.make(seq_len=5, form="hochreiter")
    with pytest.raises(ValueError, match="variable_delay"):
        copy.make(seq_len=10, variable_delay="yes")
