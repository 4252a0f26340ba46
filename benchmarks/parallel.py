"""Data parallelism's overhead, and where the gradient all-reduces go (experiments/parallel.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m benchmarks.parallel [smoke]

Prints a markdown table (README "Performance"): milliseconds per train step (sampling included)
of the copy config on meshes of 1, 2, 4 (and 8) devices next to plain jit without a mesh, and
the all-reduces in the compiled step, with how many sit inside a while loop (the backward scan),
for our `shard_map` step and for jit's automatic partitioner given the same sharded inputs.

`all_reduce_counts(hlo_text)` is also what tests/test_parallel.py checks the compiled step with.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import ml_collections

from experiments import parallel, setup, train
from experiments.configs import copy as copy_config


def all_reduce_counts(hlo_text: str) -> tuple[int, int]:
    """Counts in compiled HLO text: (all-reduce ops, while loops whose body runs one).

    Computations are matched by name prefix, so the second count can only err upwards (a loop
    wrongly counted), never hide an all-reduce inside a loop.
    """
    comps, name = {}, None
    for line in hlo_text.splitlines():
        head = line.split("(")[0].split()
        if line and not line[0].isspace() and head and line.rstrip().endswith("{"):
            name = head[-1].lstrip("%")
            comps[name] = []
        elif name is not None:
            comps[name].append(line)

    def is_all_reduce(line):
        return " all-reduce(" in line or " all-reduce-start(" in line

    def reaches(comp, seen):
        if comp in seen or comp not in comps:
            return False
        seen.add(comp)
        return any(is_all_reduce(line) or any(
            f"%{c}" in line and reaches(c, seen) for c in comps if f"%{c}" in line)
            for line in comps[comp])

    bodies = {line.split("body=")[1].split(",")[0].split()[0].lstrip("%")
              for lines in comps.values() for line in lines if " while(" in line}
    total = sum(is_all_reduce(line) for lines in comps.values() for line in lines)
    inside = sum(reaches(b, set()) for b in bodies)
    return total, inside


def _ms_per_step(s: setup.Setup, state: train.TrainState, steps: int, repeats: int) -> float:
    """Best of `repeats` timed rounds of `steps` steps (after one untimed round that compiles),
    blocking every SYNC_EVERY steps as the trainer does."""
    best = float("inf")
    for r in range(repeats + 1):
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for i in range(steps):
            state, _ = train.train_step(s, state, train.sample_batch(s, state))
            if i % parallel.SYNC_EVERY == parallel.SYNC_EVERY - 1:
                jax.block_until_ready(state)
        jax.block_until_ready(state)
        if r:
            best = min(best, (time.perf_counter() - t0) / steps)
    return 1e3 * best


def benchmark(config: ml_collections.ConfigDict, device_counts=(1, 2, 4), steps: int = 40,
              repeats: int = 3) -> list[dict]:
    """Milliseconds per train step on meshes of each size, side by side.

    Rows: {"devices": n (None: plain jit without a mesh), "ms_per_step": best of `repeats`,
    "all_reduce": all_reduce_counts of the step, "auto_all_reduce": the same for jit's automatic
    partitioner given the same sharded inputs}.
    """
    rows = []
    for n in (None,) + tuple(device_counts):  # None: plain jit, no mesh (the reference)
        config = ml_collections.ConfigDict(config.to_dict())
        config.parallel.num_devices = n or 1
        s = setup.build(config, with_layout=n is not None)
        state = train.create_train_state(s, config.seed, config.num_seeds)
        if n is not None:
            state = parallel.to_global(s.layout, state)
        batch = train.sample_batch(s, state)
        hlo = train.train_step.lower(s, state, batch).compile().as_text() if n else ""
        auto = jax.jit(lambda st, b, s=s: jax.vmap(
            functools.partial(train.train_step_one, s))(st, b)).lower(state, batch)
        rows.append({"devices": n, "ms_per_step": _ms_per_step(s, state, steps, repeats),
                     "all_reduce": all_reduce_counts(hlo),
                     "auto_all_reduce": all_reduce_counts(auto.compile().as_text())})
    return rows


def main(arg: str | None) -> None:
    """Prints the table for the copy config (`arg`: its get_config argument, e.g. "smoke")."""
    n_max = jax.device_count()
    results = benchmark(copy_config.get_config(arg), tuple(n for n in (1, 2, 4, 8) if n <= n_max))
    base = results[1]["ms_per_step"]
    print(f"copy{':' + arg if arg else ''} on {jax.devices()[0].platform}, "
          f"{n_max} visible devices")
    print("| devices | ms/step | vs 1 device | all-reduces/step (in loop) | "
          "automatic partitioner (in loop) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['devices'] or '1, no mesh (plain jit)'} | {r['ms_per_step']:.2f} | "
              f"{r['ms_per_step'] / base:.2f}x | "
              f"{r['all_reduce'][0]} ({r['all_reduce'][1]}) | "
              f"{r['auto_all_reduce'][0]} ({r['auto_all_reduce'][1]}) |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
