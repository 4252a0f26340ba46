"""Data parallelism over devices and hosts with `jax.sharding` and `jax.distributed`.

The trainer (experiments/train.py) runs every step through a `Layout`: a one-axis `Mesh` over the
devices in use and what is split over it (the `Partition`, config field `parallel.shard`):
  batch  (default) the batch axis of every training batch is split over the devices; params and
         optimizer state are replicated; each device computes the gradient of its slice and one
         explicit `pmean` after the backward scan averages gradients and metrics.
  seeds  the num_seeds axis of the state and the batch is split over the devices; the seeds are
         independent models, so a step needs no collective (sweeps of many seeds).
One device is the same code path with a mesh of size 1.

CPU cores (`parallel.cpu_devices`): XLA:CPU runs a step loop's small matmuls (`[32, 128] @
[128, 512]`, 4 MFLOP) on one core, however many the machine has, and runs each device's program
on a thread of its own. So on a CPU `python -m experiments.main` asks JAX for one CPU device per
core (`jax_num_cpu_devices`, `set_cpu_devices`) and the batch layout splits every step over them:
at B=32, H=128, T=100 a training step takes 0.75-0.81x the time on 2 cores (README
"Performance").

Why `shard_map` and not the automatic partitioner: jit with sharded inputs may place a gradient
all-reduce inside the backward scan's loop (one per time step; `python -m benchmarks.parallel`
prints where it puts them); here it is one all-reduce per step, after the scan, checked in the
compiled HLO in tests/test_parallel.py. Evaluation is not sharded: every device evaluates the
whole (fixed) eval batch with the replicated params. The gradients and metrics of a step are
raveled into one vector first, so that the step has exactly one all-reduce whatever the tree.
`check_vma=False`: with the default check the scan's zero carry fails to trace, and a `pmean` of
gradients JAX already reduced would give gradients N times too large (the tests compare against
the single-device step, which catches that).

Data: the batch of step n is drawn from (seed, n) as on one device, inside the jitted sampler
whose output is constrained to the batch sharding, so XLA partitions the sampling over the
devices (and processes) instead of one process building and scattering it; with
`jax_threefry_partitionable` (the default) the values do not depend on the layout (tested
bitwise), so the same command gives the same model on 1 or N devices and on 1 or P processes, to
float rounding of the gradient mean. (Keys per (seed, step, process) with
`make_array_from_process_local_data` would make the data, hence the model, depend on the
number of processes.)

Several processes (hosts): `initialize(config)` calls `jax.distributed.initialize` when
`distributed.coordinator_address` is set (with `num_processes`, `process_id`) or when
`distributed.auto` is True (the cluster is detected from the environment, e.g. SLURM). Every
process runs the same program on its addressable shards of global arrays; orbax saves and
restores one checkpoint from all processes (a shared filesystem is required); only process 0
writes metrics, logs and result files (`is_main()`).
"""

from __future__ import annotations

import enum
import functools
import logging as std_logging
import os
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"  # the mesh's one axis
SYNC_EVERY = 16  # block the host every this many steps (see `throttle`)


class Partition(str, enum.Enum):
    """What the devices split (config field `parallel.shard`): the batch (params replicated) or
    the seeds (independent models)."""

    BATCH = "batch"
    SEEDS = "seeds"


class Layout(NamedTuple):
    """The mesh and the sharded axis (hashable: part of the trainer's static Setup)."""

    mesh: Mesh
    partition: Partition

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def state_spec(self) -> P:
        """Of every TrainState leaf [S, ...]: replicated, or split over seeds."""
        return P(AXIS) if self.partition is Partition.SEEDS else P()

    @property
    def batch_spec(self) -> P:
        """Of every Batch leaf [S, B, ...]: split over the batch axis B, or over the seeds S."""
        return P(AXIS) if self.partition is Partition.SEEDS else P(None, AXIS)

    def sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)


# ---------------------------------------------------------------------------------------------
# Runtime and layout.

def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_device_count(*configs: ml_collections.ConfigDict) -> int | None:
    """The number of XLA CPU devices to ask JAX for (one config, or every run of a sweep that
    one process trains), or None to leave JAX's own.

    `parallel.cpu_devices` N >= 1 (of the first config): N. 0 (the default): one per core this
    process may use, cut to the largest count that divides what the layout splits
    (`train.batch_size`, or `num_seeds` with shard=seeds) in every config, so that the default
    never refuses a batch size; None (JAX's own, one device) for a multi-process run or when
    the environment already sets a count (`XLA_FLAGS=--xla_force_host_platform_device_count`,
    `JAX_NUM_CPU_DEVICES`).

    Raises:
      ValueError: `parallel.cpu_devices` not an integer >= 0.
    """
    for config in configs:
        n = config.parallel.get("cpu_devices", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"parallel.cpu_devices: expected 0 (one per core) or N >= 1, "
                             f"got {n!r}")
    if configs[0].parallel.get("cpu_devices", 0):
        return configs[0].parallel.cpu_devices
    d = configs[0].distributed
    if (d.coordinator_address is not None or d.auto or "JAX_NUM_CPU_DEVICES" in os.environ
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return None
    sizes = [c.num_seeds if c.parallel.shard == Partition.SEEDS.value else c.train.batch_size
             for c in configs]
    if not all(isinstance(size, int) and size >= 1 for size in sizes):
        return None  # setup.validate names the field
    return max(k for k in range(1, _usable_cores() + 1) if all(s % k == 0 for s in sizes))


def set_cpu_devices(*configs: ml_collections.ConfigDict) -> None:
    """Asks JAX for `cpu_device_count(*configs)` CPU devices. The entry points' business (a
    process-wide setting): `experiments.main` and `experiments.sweep` call it first; in-process
    users of the trainer keep JAX's one CPU device unless they call it before any JAX
    computation.

    Raises:
      ValueError: a bad `parallel.cpu_devices`, or one set after JAX started its backends.
    """
    n = cpu_device_count(*configs)
    if n is None or n == jax.config.jax_num_cpu_devices:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX has run a computation already
        if configs[0].parallel.get("cpu_devices", 0):
            raise ValueError(f"parallel.cpu_devices={n}: JAX has already started (set it "
                             f"before any JAX computation)") from None
        logging.info("JAX already started: keeping its CPU device count")


def initialize(config: ml_collections.ConfigDict) -> None:
    """Starts the multi-process runtime if the config asks for it (idempotent).

    Must run before anything touches a device. Nothing happens when
    `distributed.coordinator_address` is unset and `distributed.auto` is False (one process).

    Raises:
      ValueError: process fields set without a coordinator address, or missing with one.
    """
    d = config.distributed
    if jax.distributed.is_initialized():
        return
    explicit = {"num_processes": d.num_processes, "process_id": d.process_id,
                "coordinator_bind_address": d.coordinator_bind_address}
    if d.coordinator_address is None:
        given = [f"distributed.{k}" for k, v in explicit.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set without distributed.coordinator_address "
                             f"(host:port of process 0)")
        if not d.auto:
            return
        explicit = {}
    else:
        for name in ("num_processes", "process_id"):
            if explicit[name] is None:
                raise ValueError(f"distributed.{name}: required with "
                                 f"distributed.coordinator_address={d.coordinator_address!r}")
        if not 0 <= d.process_id < d.num_processes:
            raise ValueError(f"distributed.process_id: expected 0 <= id < num_processes="
                             f"{d.num_processes}, got {d.process_id}")
        explicit["coordinator_address"] = d.coordinator_address
    jax.distributed.initialize(
        **{k: v for k, v in explicit.items() if v is not None},
        initialization_timeout=d.initialization_timeout_s,
        heartbeat_timeout_seconds=d.heartbeat_timeout_s)
    if not is_main():
        logging.set_verbosity(logging.WARNING)  # process 0 alone logs progress
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def quiet_library_logs() -> None:
    """Drops orbax's and XLA's INFO lines (a few dozen per checkpoint save) from absl's log,
    keeping the trainer's progress lines and every warning. The entry points' business (a
    process-wide setting): `experiments.main` and `experiments.sweep` call it once."""
    def keep(record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            part in record.pathname for part in ("/orbax/", "xla_bridge"))
    logging.get_absl_handler().addFilter(keep)


def is_main() -> bool:
    """Whether this process writes files and logs (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def make_layout(config: ml_collections.ConfigDict) -> Layout:
    """The Layout of `config.parallel` over the visible devices (all of them by default).

    Raises:
      ValueError: unknown `parallel.shard`, bad `parallel.num_devices`, or a batch size
        (num_seeds with shard=seeds) that the device count does not divide. Raised before
        anything is compiled.
    """
    p = config.parallel
    try:
        partition = Partition(p.shard)
    except ValueError:
        raise ValueError(f"parallel.shard: unknown {p.shard!r}; valid: "
                         f"{[s.value for s in Partition]}") from None
    devices = jax.devices()
    n = p.num_devices or len(devices)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(devices):
        raise ValueError(f"parallel.num_devices: expected 0 (all) or 1..{len(devices)}, got "
                         f"{p.num_devices!r}")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"parallel.num_devices: must be 0 (all {len(devices)} devices) with "
                         f"{jax.process_count()} processes, got {n}")
    field, size = (("num_seeds", config.num_seeds) if partition is Partition.SEEDS
                   else ("train.batch_size", config.train.batch_size))
    if size % n:
        raise ValueError(f"{field}={size} is not divisible by the {n} devices of the mesh "
                         f"(parallel.shard={partition.value}); change {field} or set "
                         f"parallel.num_devices")
    return Layout(mesh=Mesh(np.asarray(devices[:n]), (AXIS,)), partition=partition)


# ---------------------------------------------------------------------------------------------
# Arrays.

def to_global(layout: Layout, tree: Any) -> Any:
    """A state tree (each leaf [S, ...], on a local device or host) as global arrays.

    Built from host values with `make_array_from_callback` (each process supplies its own
    shards) rather than `device_put`, which returns a broken array when each process has one
    device.
    """
    sharding = layout.sharding(layout.state_spec)
    host = jax.device_get(tree)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
        host)


def constrain_batch(layout: Layout, batch: Any) -> Any:
    """Inside jit: lays `batch` (leaves [S, B, ...]) out as the step expects."""
    return jax.lax.with_sharding_constraint(batch, layout.sharding(layout.batch_spec))


def replicate(layout: Layout, tree: Any) -> Any:
    """Inside jit: makes every leaf replicated, so every process can read it (metrics)."""
    return jax.lax.with_sharding_constraint(tree, layout.sharding(P()))


def fetch(tree: Any) -> Any:
    """Host numpy copy of a tree of (possibly not fully addressable) global arrays."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(jax.device_get(x))
    return jax.tree.map(one, tree)


def throttle(layout: Layout, step: int, tree: Any) -> None:
    """Blocks on `tree` every SYNC_EVERY steps when the step has collectives.

    On (fake) CPU devices, 50+ collective programs queued without waiting abort the process.
    """
    if layout.num_devices > 1 and step % SYNC_EVERY == 0:
        jax.block_until_ready(tree)


# ---------------------------------------------------------------------------------------------
# The step.

def _all_reduce(grads: Any, metrics: dict) -> tuple[Any, dict]:
    # One vector, so one all-reduce per step whatever the number of leaves.
    flat, unravel = ravel_pytree((grads, metrics))
    return unravel(jax.lax.pmean(flat, AXIS))


def sharded_step(layout: Layout, step_one: Callable) -> Callable:
    """The step of every seed, laid out on the mesh (call inside jit).

    Args:
      layout: the Layout.
      step_one: `(state, batch, all_reduce=None) -> (state, metrics)` for one seed: must apply
        `all_reduce(grads, metrics) -> (grads, metrics)` (if given) between the backward pass
        and the optimizer update.

    Returns:
      `(state, batch) -> (state, metrics)` on trees with a leading seed axis [S]; metrics are
      replicated.
    """
    if layout.partition is Partition.BATCH:
        body = jax.vmap(functools.partial(step_one, all_reduce=_all_reduce))
        out_specs = (P(), P())  # equal on every device after the pmean
    else:
        body = jax.vmap(step_one)
        out_specs = (P(AXIS), P(AXIS))
    mapped = jax.shard_map(body, mesh=layout.mesh, in_specs=(layout.state_spec, layout.batch_spec),
                           out_specs=out_specs, check_vma=False)

    def step(state, batch):
        state, metrics = mapped(state, batch)
        return state, replicate(layout, metrics)
    return step
