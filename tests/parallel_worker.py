"""Subprocess side of tests/test_parallel.py (needs its own device count, set before jax starts).

    python tests/parallel_worker.py local OUT.npz
        with XLA_FLAGS=--xla_force_host_platform_device_count=4: data-parallel and seed-sharded
        steps next to the single-device ones, the compiled HLO's all-reduce counts, bad layouts.
    python tests/parallel_worker.py process OUT.npz PORT PROCESS_ID WORKDIR
        one of 2 processes on 127.0.0.1:PORT (2 devices each): a copy smoke run stopped at step
        30, resumed from the checkpoint both wrote at step 20, final params saved; then process 1
        exits abruptly (code 3) and process 0 waits for it at a barrier, which must fail.
"""

import functools
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import parallel as parallel_bench  # noqa: E402
from experiments import parallel, train  # noqa: E402
from experiments import setup as setup_lib  # noqa: E402
from tests import helpers  # noqa: E402


def run_steps(setup, state, n, step=None):
    step = step or functools.partial(train.train_step, setup)
    losses = []
    for i in range(n):
        state, metrics = step(state, train.sample_batch(setup, state))
        losses.append(metrics["loss"])
        if setup.layout is not None:
            parallel.throttle(setup.layout, i + 1, state)
    return state, np.asarray(parallel.fetch(losses))


def flat(tree):
    return np.concatenate([np.asarray(parallel.fetch(x), np.float64).ravel()
                           for x in jax.tree.leaves(tree)])


def local(out):
    assert jax.device_count() == 4, jax.devices()
    res = {}
    config = helpers.smoke_config()
    single = setup_lib.build(config)
    dp = single._replace(layout=parallel.make_layout(config))
    state = train.create_train_state(single, seed=0)
    batch = train.sample_batch(single, state)
    dp_state = parallel.to_global(dp.layout, state)
    dp_batch = train.sample_batch(dp, dp_state)
    res["batch_sharding_devices"] = len(dp_batch.inputs.sharding.device_set)
    res["batch_single"], res["batch_dp"] = flat(batch), flat(dp_batch)
    new, metrics = train.train_step(single, state, batch)
    dp_step = train.train_step.lower(dp, dp_state, dp_batch).compile()  # compiled once
    dp_new, dp_metrics = dp_step(dp_state, dp_batch)
    res["params_single"], res["params_dp"] = flat(new.params), flat(dp_new.params)
    res["opt_single"], res["opt_dp"] = flat(new.opt_state), flat(dp_new.opt_state)
    res["metrics_single"] = flat([metrics[k] for k in sorted(metrics)])
    res["metrics_dp"] = flat([dp_metrics[k] for k in sorted(dp_metrics)])
    total, inside = parallel_bench.all_reduce_counts(dp_step.as_text())
    res["hlo_batch"] = np.array([total, inside])

    _, res["curve_single"] = run_steps(single, state, 12)
    _, res["curve_dp"] = run_steps(dp, dp_state, 12, dp_step)

    config = helpers.smoke_config(num_seeds=4, **{"parallel.shard": "seeds"})
    single = setup_lib.build(config)
    sharded = single._replace(layout=parallel.make_layout(config))
    state = train.create_train_state(single, seed=3, num_seeds=4)
    s_state = parallel.to_global(sharded.layout, state)
    res["seeds_state_devices"] = len(s_state.params["readout"]["w"].sharding.device_set)
    s_step = train.train_step.lower(sharded, s_state,
                                    train.sample_batch(sharded, s_state)).compile()
    end, res["seeds_curve_single"] = run_steps(single, state, 5)
    s_end, res["seeds_curve_sharded"] = run_steps(sharded, s_state, 5, s_step)
    res["seeds_single"], res["seeds_sharded"] = flat(end.params), flat(s_end.params)
    total, inside = parallel_bench.all_reduce_counts(s_step.as_text())
    res["hlo_seeds"] = np.array([total, inside])

    errors = []
    for overrides in ({"train.batch_size": 6}, {"num_seeds": 3, "parallel.shard": "seeds"},
                      {"parallel.num_devices": 5}, {"parallel.shard": "model"}):
        try:
            parallel.make_layout(helpers.smoke_config(**overrides))
            errors.append("no error")
        except ValueError as e:
            errors.append(str(e))
    res["errors"] = np.array(json.dumps(errors))
    np.savez(out, **res)


class _Interrupt(Exception):
    pass


def process(out, port, process_id, workdir):
    config = helpers.smoke_config(**{
        "distributed.coordinator_address": f"127.0.0.1:{port}",
        "distributed.coordinator_bind_address": f"127.0.0.1:{port}",
        "distributed.num_processes": 2, "distributed.process_id": process_id,
        "distributed.initialization_timeout_s": 60, "distributed.heartbeat_timeout_s": 6})
    setup_lib.build(config)  # starts jax.distributed
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    original, calls = train.train_step, []

    def stopping_step(setup, state, batch):
        calls.append(1)
        if len(calls) == 31:
            raise _Interrupt
        return original(setup, state, batch)

    train.train_step = stopping_step
    try:
        train.train_and_evaluate(config, workdir)
    except _Interrupt:
        pass
    train.train_step = lambda *args: (calls.append(1), original(*args))[1]
    del calls[:]
    state = train.train_and_evaluate(config, workdir)  # restores step 20
    np.savez(out, params=flat(state.params), step=np.asarray(parallel.fetch(state.step)),
             main=parallel.is_main(), steps_after_restore=len(calls))
    parallel.barrier("saved")
    if process_id == 1:
        os._exit(3)  # no cleanup, like a lost host
    parallel.barrier("after")  # waits for a dead process: must fail, not hang
    sys.exit("process 0 went on after process 1 died")


if __name__ == "__main__":
    if sys.argv[1] == "local":
        local(sys.argv[2])
    else:
        process(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
