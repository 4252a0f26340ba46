"""Pins the trainer's reliability against uninterrupted runs: SIGKILL at random points (3 kills,
in subprocesses, via scripts/fault_injection.py; its concurrent-workdir and damaged-newest cases
are marked slow), SIGTERM / SIGINT save the current step and the
rerun ends bitwise equal, non-finite loss stops naming the step and the last good checkpoint,
`train.skip_nonfinite` skips and counts exactly the non-finite updates, two runs of one config
are bitwise equal, nothing loads pickles, and `layers.apply` equals a Python-loop reference
(hypothesis)."""

import json
import os
import re
import signal

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpoint, train
from experiments import setup as setup_lib
from gated_rnn import layers
from scripts import fault_injection
from tests import helpers
from tests import numpy_ref as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
# The copy smoke config as scripts/fault_injection.py's command runs it (log 5, checkpoint 10,
# eval 20): overrides of helpers.smoke_config.
FAULT_INJECTION = {"train.steps": STEPS, "train.log_every": 5, "train.checkpoint_every": 10,
                   "train.eval_every": 20, "train.max_checkpoints": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    return workdir, train.train_and_evaluate(helpers.smoke_config(**FAULT_INJECTION), workdir)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("steps_per_sec", "wall_time_s")} for line in f]


def _assert_states_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# Slow: kill -9 trials in subprocesses (the in-process resume tests of test_train.py and
# test_checkpoint.py stay in the default run).
@pytest.mark.slow
def test_fault_injection_three_kills(reference, tmp_path):
    """SIGKILL 3 times (every second kill while a save is in flight); rerun until done."""
    done = fault_injection.inject(str(tmp_path), kills=3, seed=0, steps=STEPS, timeout=240,
                                  reference=reference[0])
    print(done)
    assert done["problems"] == [] and done["kills"] == 3
    assert done["restarts"] == 4


@pytest.mark.slow
def test_fault_injection_concurrent_and_damaged_newest(reference, tmp_path):
    """The script's other cases (~2 min on 2 shared cores: subprocess runs): a second command
    on a busy workdir is refused naming the first's pid, and a finished run whose newest step
    lost every file reruns bitwise equal (in-process counterparts: tests/test_checkpoint.py)."""
    assert fault_injection.concurrent(str(tmp_path), reference[0], STEPS) == []
    assert fault_injection.damaged_newest(str(tmp_path), reference[0], STEPS) == []


def test_same_config_same_bits(reference, tmp_path):
    state = train.train_and_evaluate(helpers.smoke_config(**FAULT_INJECTION), str(tmp_path))
    _assert_states_equal(state, reference[1])
    assert _rows(str(tmp_path)) == _rows(reference[0])


@pytest.mark.parametrize("signum,at_step", [(signal.SIGTERM, 23), (signal.SIGINT, 30)])
def test_signal_saves_current_step_and_resume_is_bitwise(reference, tmp_path, monkeypatch,
                                                         signum, at_step):
    workdir = str(tmp_path)
    original, calls = train.train_step, []

    def signalling_step(setup, state, batch):
        calls.append(1)
        if len(calls) == at_step:
            os.kill(os.getpid(), signum)
        return original(setup, state, batch)

    monkeypatch.setattr(train, "train_step", signalling_step)
    # The handlers before the run (SIG_IGN for SIGINT when the suite runs as a background job).
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(checkpoint.Stopped, match=rf"stopped by {signum.name} at step {at_step}: "
                                                 r"checkpoint saved") as info:
        train.train_and_evaluate(helpers.smoke_config(**FAULT_INJECTION), workdir)
    assert info.value.code == 128 + signum
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    assert str(at_step) in os.listdir(os.path.join(workdir, "checkpoints"))
    monkeypatch.setattr(train, "train_step", original)
    state = train.train_and_evaluate(helpers.smoke_config(**FAULT_INJECTION), workdir)
    _assert_states_equal(state, reference[1])
    assert _rows(workdir) == _rows(reference[0])


def _nan_when(condition):
    """A loss_fn whose loss is NaN on the batches where condition(batch) holds."""
    original = train.loss_fn

    def loss_fn(setup, params, batch):
        loss, metrics = original(setup, params, batch)
        loss = loss * jnp.where(condition(batch), jnp.nan, 1.0)  # NaN gradients too
        return loss, dict(metrics, loss=loss)
    return loss_fn


def test_nan_stops_naming_step_and_last_checkpoint(tmp_path, monkeypatch):
    """Finite until step 20 (checkpointed), NaN from step 21: stops at the log step 25."""
    original, calls = train.loss_fn, []
    workdir = str(tmp_path)

    class Interrupt(Exception):
        pass

    def first_twenty(setup, state, batch):
        calls.append(1)
        if len(calls) > 20:
            raise Interrupt
        return step(setup, state, batch)

    step = train.train_step
    monkeypatch.setattr(train, "train_step", first_twenty)
    with pytest.raises(Interrupt):
        train.train_and_evaluate(helpers.smoke_config(**FAULT_INJECTION), workdir)
    monkeypatch.setattr(train, "train_step", step)
    monkeypatch.setattr(train, "loss_fn", _nan_when(lambda batch: True))
    train.train_step.clear_cache()
    try:
        with pytest.raises(FloatingPointError, match=r"by step 25 for seed\(s\) \[0\]; last "
                                                     r"checkpoint: step 20 \(nothing non-finite"
                                                     r".*\. To go on: rerun with --config\.train\."
                                                     r"skip_nonfinite=True .* or a lower --config"
                                                     r"\.train\.learning_rate, plus --fresh_start"
                                                     r".* resumes from step 20 and stops here"):
            train.train_and_evaluate(helpers.smoke_config(**FAULT_INJECTION), workdir)
    finally:
        train.train_step.clear_cache()
    monkeypatch.setattr(train, "loss_fn", original)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]


def test_skip_nonfinite_counts_skipped_updates(tmp_path, monkeypatch):
    """NaN loss on the batches whose first symbol is 1: those updates are skipped and counted."""
    config = helpers.smoke_config(**FAULT_INJECTION, seed=3)
    config.train.skip_nonfinite = True
    first_is_one = lambda batch: batch.inputs[0, 0, 1] == 1  # noqa: E731
    setup = setup_lib.build(config)
    state = train.create_train_state(setup, config.seed)
    expected = []  # independent count: sample each step's batch directly
    for n in range(STEPS):
        batch = train.sample_batch(setup, state._replace(step=jnp.full_like(state.step, n)))
        expected.append(int(first_is_one(jax.tree.map(lambda x: x[0], batch))))
    assert 0 < sum(expected) < STEPS

    monkeypatch.setattr(train, "loss_fn", _nan_when(first_is_one))
    train.train_step.clear_cache()
    try:
        final = train.train_and_evaluate(config, str(tmp_path))
    finally:
        train.train_step.clear_cache()
    rows = [r for r in _rows(str(tmp_path)) if r["split"] == "train"]
    assert [r["skipped_updates"] for r in rows] == [
        sum(expected[i:i + 5]) for i in range(0, STEPS, 5)]
    assert int(final.opt_state.total_notfinite[0]) == sum(expected)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(final.params))


def test_nothing_loads_pickles():
    """No allow_pickle=True, pickle.load or torch.load without weights_only=True in our code."""
    bad = re.compile(r"allow_pickle\s*=\s*True|pickle\.loads?\(|cloudpickle|"
                     r"torch\.load\((?![^)]*weights_only\s*=\s*True)")
    found = []
    for top in ("gated_rnn", "experiments", "scripts", "benchmarks", "tests"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py") and name != "test_reliability.py":
                    with open(os.path.join(root, name)) as f:
                        found += [f"{name}: {m.group(0)}" for m in bad.finditer(f.read())]
    assert found == []


# --- layers.apply against a Python loop -------------------------------------------------------

def _ref_step(cell, p, variant):
    p = {k: (None if v is None else np.asarray(v)) for k, v in p._asdict().items()}
    if cell == "lstm":
        return lambda s, x: ref.lstm_step(p, s[0], s[1], x), 2
    if cell == "rnn":
        return lambda s, x: (ref.rnn_step(p, s[0], x),), 1
    return lambda s, x: (ref.gru_step(p, s[0], x, variant),), 1


def _stack_reference(spec, params, xs, lengths):
    """Each layer, direction and sequence on its own, in NumPy float64."""
    inputs = np.asarray(xs)
    for layer in params:
        outs = []
        for d, p in enumerate(layer):
            step, n_state = _ref_step(spec.cell.value, p, spec.gru_variant.value)
            ys = []
            for b in range(inputs.shape[0]):
                state = tuple(np.zeros(spec.hidden_size) for _ in range(n_state))
                _, y = ref.run(step, state, inputs[b], None if lengths is None else lengths[b],
                               reverse=d == 1)
                ys.append(y)
            outs.append(np.stack(ys))
        inputs = np.concatenate(outs, axis=-1)
    return inputs


@hypothesis.settings(max_examples=5, deadline=None, derandomize=True)
@hypothesis.given(cell=st.sampled_from(["rnn", "lstm", "gru"]),
                  variant=st.sampled_from(["reset_after", "reset_before"]),
                  num_layers=st.integers(1, 2), bidirectional=st.booleans(),
                  batch=st.integers(1, 3), steps=st.integers(1, 5), data=st.data())
def test_property_layers_apply_matches_loop(cell, variant, num_layers, bidirectional, batch,
                                            steps, data):
    if cell != "gru":
        variant = "reset_after"
    lengths = data.draw(st.one_of(st.none(), st.lists(st.integers(0, steps), min_size=batch,
                                                      max_size=batch)))
    seed = data.draw(st.integers(0, 2**16))
    with jax.enable_x64():
        spec = layers.Spec(cell=cell, input_size=3, hidden_size=4, num_layers=num_layers,
                           bidirectional=bidirectional, gru_variant=variant, init="torch",
                           dtype=jnp.float64)
        key = jax.random.key(seed)
        params = layers.init(key, spec)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (batch, steps, 3), jnp.float64)
        lengths = None if lengths is None else np.array(lengths)
        ys, _ = layers.apply(spec, params, xs, seq_lengths=lengths)
        np.testing.assert_allclose(ys, _stack_reference(spec, params, xs, lengths),
                                   rtol=1e-11, atol=1e-11)
