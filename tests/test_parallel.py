"""Pins data parallelism (experiments/parallel.py) against the single-device trainer.

4 fake CPU devices, in a subprocess (this process keeps its one device): the batch sharded over
4 devices is the single-device batch bitwise; one data-parallel step equals the single-device
step within 1e-6 relative (a missing or doubled gradient mean would be off by 4x); a short run
gives the same loss curve; seeds sharded over devices equal the seeds vmapped on one device; the
compiled step has exactly one all-reduce and none inside a while loop (the backward scan); a
batch or seed count the devices do not divide fails naming the field.
2 processes on 127.0.0.1 with 2 devices each (tests/parallel_worker.py): a run stopped at step 30
and resumed from the checkpoint both processes wrote at step 20 ends bitwise equal on both and
equal to the single-process run within float tolerance; then a process that dies makes the
other, waiting for it in a collective, exit with an error (heartbeat timeout) instead of hanging.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks import parallel as parallel_bench
from experiments import parallel, train
from experiments import setup as setup_lib
from tests import helpers

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "parallel_worker.py")
TIMEOUT_S = 240


def _xla_flags(devices=None):
    """This process's XLA_FLAGS (conftest's optimization level) without a device count, plus
    `devices` CPU devices if given: the flags of a worker process."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if "xla_force_host_platform_device_count" not in f]
    if devices is not None:
        kept.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(kept)


def _env(devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags(devices))
    env.pop("GATED_RNN_REGEN_GOLDEN", None)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rel(got, want):
    """Largest difference relative to the largest value (elementwise ratios blow up where a
    gradient sums to nearly 0 and the order of the sum moves its last bits)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# --- one process, 4 devices -------------------------------------------------------------------

@pytest.fixture(scope="module")
def four(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("four") / "local.npz")
    proc = subprocess.run([sys.executable, WORKER, "local", out], env=_env(4), cwd=HERE,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def test_batch_is_sharded_and_equal_to_single_device(four):
    assert four["batch_sharding_devices"] == 4
    np.testing.assert_array_equal(four["batch_dp"], four["batch_single"])


def test_one_data_parallel_step_equals_single_device_step(four):
    assert _rel(four["params_dp"], four["params_single"]) < 1e-6
    # RMSProp's nu is 0.1 * grad**2 after one step: gradients within 1e-6 -> nu within 2e-6.
    assert _rel(four["opt_dp"], four["opt_single"]) < 2e-6
    # accuracy, grad_norm, loss, normalized_loss, seq_accuracy: means over the whole batch
    np.testing.assert_allclose(four["metrics_dp"], four["metrics_single"], rtol=1e-6)


def test_short_run_has_the_same_loss_curve(four):
    np.testing.assert_allclose(four["curve_dp"], four["curve_single"], rtol=2e-6)
    assert four["curve_dp"][-1] < four["curve_dp"][0]


def test_seeds_sharded_over_devices_equal_seeds_on_one_device(four):
    assert four["seeds_state_devices"] == 4
    np.testing.assert_allclose(four["seeds_curve_sharded"], four["seeds_curve_single"],
                               rtol=1e-6)
    assert _rel(four["seeds_sharded"], four["seeds_single"]) < 1e-6


def test_one_all_reduce_per_step_outside_the_scan(four):
    total, in_loop = four["hlo_batch"]
    assert (total, in_loop) == (1, 0)
    assert tuple(four["hlo_seeds"]) == (0, 0)  # independent seeds: no gradient all-reduce


def test_layouts_the_devices_do_not_fit_name_the_field(four):
    import json
    batch, seeds, count, shard = json.loads(str(four["errors"]))
    assert batch.startswith("train.batch_size=6 is not divisible by the 4 devices")
    assert seeds.startswith("num_seeds=3 is not divisible by the 4 devices")
    assert count.startswith("parallel.num_devices") and "got 5" in count
    assert shard.startswith("parallel.shard: unknown 'model'")


def test_all_reduce_counter_sees_one_inside_a_loop():
    """The HLO counter against a program that all-reduces in a fori_loop (4 fake devices are not
    needed: a 1-device mesh keeps the collective)."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (parallel.AXIS,))

    def body(x):
        return jax.lax.fori_loop(0, 3, lambda i, y: jax.lax.pmean(y * 2.0, parallel.AXIS), x)

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=parallel.P(parallel.AXIS),
                              out_specs=parallel.P(parallel.AXIS), check_vma=False))
    total, in_loop = parallel_bench.all_reduce_counts(f.lower(np.ones(4, np.float32)).compile()
                                                .as_text())
    assert total >= 1 and in_loop == 1


# --- one process, one device: the same code path ----------------------------------------------

def test_one_device_mesh_step_equals_plain_step():
    config = helpers.smoke_config()
    setup = setup_lib.build(config)
    meshed = setup._replace(layout=parallel.make_layout(config))
    assert meshed.layout.num_devices == jax.device_count() == 1
    state = train.create_train_state(setup, seed=0)
    want, want_metrics = train.train_step(setup, state, train.sample_batch(setup, state))
    m_state = parallel.to_global(meshed.layout, state)
    got, got_metrics = train.train_step(meshed, m_state, train.sample_batch(meshed, m_state))
    for a, b in zip(jax.tree.leaves((got, got_metrics)), jax.tree.leaves((want, want_metrics))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("overrides, message", [
    ({"distributed.process_id": 1}, "distributed.process_id set without "
                                    "distributed.coordinator_address"),
    ({"distributed.coordinator_address": "127.0.0.1:1"}, "distributed.num_processes: required"),
    ({"distributed.coordinator_address": "127.0.0.1:1", "distributed.num_processes": 2,
      "distributed.process_id": 2}, "distributed.process_id: expected 0 <= id < num_processes"),
])
def test_bad_distributed_fields_fail_before_starting(overrides, message):
    with pytest.raises(ValueError, match=message):
        parallel.initialize(helpers.smoke_config(**overrides))
    assert not jax.distributed.is_initialized()


def test_cpu_device_count(monkeypatch):
    """One CPU device per core, cut to a divisor of what is split; explicit values as given;
    left to JAX where the environment or a multi-process run decides."""
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(parallel, "_usable_cores", lambda: 4)
    count = lambda **o: parallel.cpu_device_count(helpers.smoke_config(**o))  # noqa: E731
    assert count(**{"train.batch_size": 32}) == 4
    assert count(**{"train.batch_size": 6}) == 3
    assert count(**{"train.batch_size": 7}) == 1
    assert count(**{"num_seeds": 2, "parallel.shard": "seeds"}) == 2
    assert count(**{"parallel.cpu_devices": 3, "train.batch_size": 7}) == 3  # as given
    assert count(**{"distributed.auto": True}) is None
    assert parallel.cpu_device_count(*(helpers.smoke_config(**{"train.batch_size": b})
                                       for b in (32, 6))) == 2  # divides every run's batch
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert count() is None
    with pytest.raises(ValueError, match=r"parallel\.cpu_devices: expected 0 .* got -1"):
        count(**{"parallel.cpu_devices": -1})


def test_command_line_uses_one_cpu_device_per_core(tmp_path):
    """`python -m experiments.main` on a CPU: the batch split over `parallel.cpu_devices`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags())
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--config=experiments/configs/copy.py:smoke",
         f"--workdir={tmp_path / 'run'}", "--config.train.steps=10",
         "--config.parallel.cpu_devices=2"],
        cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Devices: 2 cpu, split over batch." in proc.stderr
    assert (tmp_path / "run" / "result.json").exists()


# --- two processes ------------------------------------------------------------------------------

def _two_processes(tmp_path, name):
    port, outs, procs = _free_port(), [], []
    for pid in range(2):
        outs.append(str(tmp_path / f"{name}{pid}.npz"))
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, "process", outs[-1], str(port), str(pid),
             str(tmp_path / name)], env=_env(2), cwd=HERE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    start, results = time.time(), []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, TIMEOUT_S - (time.time() - start)))
            results.append((p.returncode, err, time.time() - start))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs, results


@pytest.fixture(scope="module")
def single_process_params():
    """The copy smoke run's final params (40 steps) on this process's one device, no mesh."""
    setup = setup_lib.build(helpers.smoke_config())
    state = train.create_train_state(setup, seed=0)
    for _ in range(40):
        state, _ = train.train_step(setup, state, train.sample_batch(setup, state))
    return np.concatenate([np.asarray(x, np.float64).ravel()
                           for x in jax.tree.leaves(state.params)])


def test_two_processes_resume_agree_and_fail_together(tmp_path, single_process_params):
    outs, results = _two_processes(tmp_path, "run")
    (rc0, err0, t0), (rc1, err1, _) = results
    assert rc1 == 3, err1[-3000:]  # the worker's os._exit(3) after saving its results
    first, second = (np.load(out) for out in outs)
    assert bool(first["main"]) and not bool(second["main"])
    assert int(first["steps_after_restore"]) == int(second["steps_after_restore"]) == 20
    np.testing.assert_array_equal(first["step"], [40])
    np.testing.assert_array_equal(first["params"], second["params"])  # bitwise
    assert _rel(first["params"], single_process_params) < 1e-6  # measured 8e-8 after 40 steps
    assert {"metrics.jsonl", "result.json", "checkpoints"} <= set(os.listdir(tmp_path / "run"))
    # Process 0 then waited for the dead process 1 at a barrier: the heartbeat timeout (6 s)
    # ends it with an error, long before our timeout.
    assert rc0 != 0 and "went on after process 1 died" not in err0, err0[-3000:]
    assert t0 < TIMEOUT_S - 30
