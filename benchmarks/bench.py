r"""gated_rnn against Flax linen and PyTorch: forward pass and training step, LSTM and GRU.

    python -m benchmarks.bench --out=bench.json           # the README table (~15 min, 2 cores)
    python -m benchmarks.bench --quick                    # smoke run, < 1 min
    python -m benchmarks.bench --configs=32,128,100 --cells=lstm --variants=auto,scan,fused

Each implementation is jitted (JAX) and warmed up; then the repeats run the implementations
interleaved (fwd and train of each, in turn, each timed call right after an untimed one: see
`_timed_warm`), and the table shows medians. The training step is
forward + backward of the mean of all outputs, gradients for all params (not the inputs).

Columns: time, ratio to gated_rnn (the first variant), GFLOP/s of the matmuls the pass needs
(forward 2·B·T·G·H·(I+H); training 2·B·T·G·H·(2I+3H): forward, dh, dW_h, dW_x), and that as a
fraction of the matmul ceiling: the best of a 2048² float32 matmul in XLA and in PyTorch,
measured in the same run. Then: compile times; peak memory of a training step (XLA's
memory_analysis: arguments + outputs + temporaries; PyTorch: growth of the resident set during
a step, sampled, in a fresh process); a T=10,000 training step with remat; 16 seeds in one vmapped step vs 16 steps.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["32,128,100", "32,128,1000", "256,128,1000", "256,512,100"],
                  "B,H,T triples (I = H), separated by commas between triples too: "
                  "`--configs=32,128,100,256,512,100`.")
flags.DEFINE_list("cells", ["lstm", "gru"], "Cells: lstm, gru.")
flags.DEFINE_list("peers", ["flax", "torch"], "Peers to run next to gated_rnn: flax, torch.")
flags.DEFINE_list("variants", ["auto", "dp"], "gated_rnn variants (the first is the reference): "
                  "auto (the defaults), scan, fused, remat, bf16, dp (auto, the batch split "
                  "over the CPU devices as the trainer does; adds flax[dp]).")
flags.DEFINE_integer("repeats", 5, "Timed repeats per implementation (median reported).")
flags.DEFINE_string("memory_config", "32,512,1000", "B,H,T for the peak-memory rows; '' skips.")
flags.DEFINE_list("memory_variants", ["auto", "remat"], "gated_rnn variants of the memory rows.")
flags.DEFINE_integer("long_steps", 10_000, "T of the remat training-step row (B=32, H=128); 0 skips.")
flags.DEFINE_integer("seeds", 16, "Models in the vmapped-seeds row (B=32, H=128, T=100); 0 skips.")
flags.DEFINE_integer("cpu_devices", 0, "XLA CPU devices to create (jax_num_cpu_devices) for the "
                     "dp variant: 0 for one per core, as the trainer does.")
flags.DEFINE_bool("quick", False, "Tiny sizes and 2 repeats: a smoke run of every row.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")

VARIANTS = {  # name -> layers.Plan fields (and data_parallel)
    "auto": {},
    "scan": {"impl": "scan"},
    "fused": {"impl": "fused"},
    "remat": {"remat": True},
    "bf16": {"impl": "fused", "matmul_dtype": "bfloat16"},
    "dp": {"data_parallel": True},  # the batch split over the CPU devices, as the trainer does
}
NUM_GATES = {"lstm": 4, "gru": 3}


def flops(kind: str, cell: str, b: int, h: int, t: int, i: int | None = None) -> float:
    """Matmul FLOPs of a forward pass or a training step (no input gradient)."""
    i = h if i is None else i
    per = 2.0 * b * t * NUM_GATES[cell] * h
    return per * ((i + h) if kind == "fwd" else (2 * i + 3 * h))


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_warm(fn: Callable[[], Any]) -> float:
    """One untimed call, then one timed call. Each library's thread pool spins for a while after
    its work (PyTorch's OpenMP, XLA's Eigen pool); the warm call keeps one implementation from
    being timed while the previous one's threads still hold the cores, and gives each its own
    warm pool, as in a training loop."""
    fn()
    return _timed(fn)


# ----------------------------------------------------------------------------- JAX peers


def _local_mesh(size: int, axis: str):
    """A one-axis mesh over the largest number of local devices that divides `size`."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    n = max(k for k in range(1, jax.local_device_count() + 1) if size % k == 0)
    return Mesh(np.asarray(jax.local_devices()[:n]), (axis,))


def _data_parallel(apply: Callable, b: int):
    """apply(params, xs) as the trainer runs it on several devices (experiments/parallel.py):
    xs `[B, ...]` split over the largest number of local devices that divides B, params
    replicated; returns (fwd, grad) to jit, the gradient averaged by one `pmean`."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    mesh = _local_mesh(b, "data")
    fwd = jax.shard_map(apply, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"),
                        check_vma=False)

    def grad(p, x):
        return jax.lax.pmean(jax.grad(lambda p, x: jnp.mean(apply(p, x)))(p, x), "data")

    return fwd, jax.shard_map(grad, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(),
                              check_vma=False)


def _jax_case(name: str, cell: str, b: int, h: int, t: int, options: dict | None = None):
    """(fwd, train, compile_s, compiled_train) thunks for gated_rnn (options) or 'flax'.
    options["data_parallel"]: split the batch over the local devices (`_data_parallel`)."""
    import jax
    import jax.numpy as jnp

    opts = dict(options or {})
    data_parallel = opts.pop("data_parallel", False)
    key = jax.random.key(0)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (b, t, h), jnp.float32)
    if name == "flax":
        import flax.linen as nn
        model = nn.RNN(nn.OptimizedLSTMCell(h) if cell == "lstm" else nn.GRUCell(h))
        params = model.init(key, xs[:, :1])
        apply = model.apply
    else:
        from gated_rnn import layers
        if "matmul_dtype" in opts:
            opts["matmul_dtype"] = jnp.dtype(opts["matmul_dtype"])
        spec = layers.Spec(cell=cell, input_size=h, hidden_size=h)
        plan = layers.Plan(**opts)
        params = layers.init(key, spec)
        apply = lambda p, x: layers.apply(spec, p, x, plan=plan)[0]  # noqa: E731
    if data_parallel:
        fwd, train = (jax.jit(f) for f in _data_parallel(apply, b))
    else:
        fwd = jax.jit(apply)
        train = jax.jit(jax.grad(lambda p, x: jnp.mean(apply(p, x))))
    start = time.perf_counter()
    fwd_c = fwd.lower(params, xs).compile()
    mid = time.perf_counter()
    train_c = train.lower(params, xs).compile()
    end = time.perf_counter()
    run_fwd = lambda: fwd_c(params, xs).block_until_ready()  # noqa: E731
    run_train = lambda: jax.block_until_ready(train_c(params, xs))  # noqa: E731
    return run_fwd, run_train, {"fwd": mid - start, "train": end - mid}, train_c


def _xla_peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _jax_ceiling(n: int) -> Callable[[], float]:
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a).lower(a).compile()
    mm(a).block_until_ready()
    return lambda: 2.0 * n ** 3 / _timed(lambda: mm(a).block_until_ready())


# ----------------------------------------------------------------------------- PyTorch


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def _torch_case(torch, cell: str, b: int, h: int, t: int):
    torch.manual_seed(0)
    model = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(h, h, batch_first=True)
    x = torch.randn(b, t, h)

    def fwd():
        with torch.inference_mode():
            model(x)

    def train():
        for p in model.parameters():
            p.grad = None
        model(x)[0].mean().backward()

    fwd(), train()
    return fwd, train


def _torch_ceiling(torch, n: int) -> Callable[[], float]:
    a = torch.randn(n, n)
    a @ a
    return lambda: 2.0 * n ** 3 / _timed(lambda: a @ a)


_TORCH_PEAK = r"""
import sys, threading, time, torch
torch.set_num_threads({threads})
cell, b, h, t = sys.argv[1], *map(int, sys.argv[2:5])
model = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(h, h, batch_first=True)
x = torch.randn(b, t, h)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def step():
    for p in model.parameters():
        p.grad = None
    model(x)[0].mean().backward()

step()  # warm-up: the allocator's steady state
base, peak, done = rss(), [0], []

def sample():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)

sampler = threading.Thread(target=sample)
sampler.start()
step()
done.append(True)
sampler.join()
print(max(peak[0], rss()) - base)
"""


def _torch_peak_bytes(cell: str, b: int, h: int, t: int) -> int | None:
    """Growth of the resident set during one training step after a warm-up step, sampled every
    0.5 ms in a fresh process (glibc maps large blocks fresh and returns them, so this is the
    step's working set; a sampled peak can miss short spikes)."""
    code = _TORCH_PEAK.format(threads=os.cpu_count() or 1)
    out = subprocess.run([sys.executable, "-c", code, cell, str(b), str(h), str(t)],
                         capture_output=True, text=True, timeout=600)
    return int(out.stdout.split()[-1]) if out.returncode == 0 else None


# ----------------------------------------------------------------------------- rows


def _parse_configs(values: list[str]) -> list[tuple[int, int, int]]:
    nums = [int(v) for value in values for v in str(value).split(",") if v.strip()]
    if len(nums) % 3:
        raise ValueError(f"--configs: expected B,H,T triples, got {values}")
    return [tuple(nums[k:k + 3]) for k in range(0, len(nums), 3)]


def speed_rows(configs, cells, variants, peers, repeats: int,
               ceiling_n: int = 2048) -> tuple[list[dict], dict]:
    """Times every implementation on every (cell, config), interleaved; returns (rows, ceiling)."""
    torch = _torch() if "torch" in peers else None
    ceilings = {"xla": _jax_ceiling(ceiling_n)}
    if torch is not None:
        ceilings["torch"] = _torch_ceiling(torch, ceiling_n)
    ceiling_samples = {k: [] for k in ceilings}
    rows = []
    for cell in cells:
        for b, h, t in configs:
            cases = {}
            for v in variants:
                fwd, train, comp, _ = _jax_case("gated_rnn", cell, b, h, t, VARIANTS[v])
                cases[f"gated_rnn[{v}]"] = (fwd, train, comp)
            if "flax" in peers:
                cases["flax"] = _jax_case("flax", cell, b, h, t)[:3]
                if "dp" in variants:  # the same lever is open to Flax: show it
                    cases["flax[dp]"] = _jax_case("flax", cell, b, h, t, VARIANTS["dp"])[:3]
            if torch is not None:
                cases["torch"] = (*_torch_case(torch, cell, b, h, t), None)
            times = {n: {"fwd": [], "train": []} for n in cases}
            for n, (fwd, train, _) in cases.items():  # warm-up
                fwd(), train()
            for _ in range(repeats):
                for k, measure in ceilings.items():
                    ceiling_samples[k].append(measure())
                for n, (fwd, train, _) in cases.items():
                    times[n]["fwd"].append(_timed_warm(fwd))
                    times[n]["train"].append(_timed_warm(train))
            for n, (_, _, comp) in cases.items():
                rows.append({"cell": cell, "B": b, "H": h, "T": t, "impl": n,
                             "fwd_s": _median(times[n]["fwd"]),
                             "train_s": _median(times[n]["train"]),
                             "fwd_min_s": min(times[n]["fwd"]),
                             "train_min_s": min(times[n]["train"]),
                             "fwd_all_s": times[n]["fwd"], "train_all_s": times[n]["train"],
                             "compile_s": comp})
            print(f"  timed {cell} B={b} H={h} T={t}", flush=True)
    ceiling = {k: _median(v) for k, v in ceiling_samples.items()}
    best = max(ceiling.values())
    for r in rows:
        ref = next(x for x in rows if (x["cell"], x["B"], x["H"], x["T"]) ==
                   (r["cell"], r["B"], r["H"], r["T"]))
        for kind in ("fwd", "train"):
            gflops = flops(kind, r["cell"], r["B"], r["H"], r["T"]) / r[f"{kind}_s"] / 1e9
            r[f"{kind}_ratio"] = r[f"{kind}_s"] / ref[f"{kind}_s"]
            r[f"{kind}_gflops"] = gflops
            r[f"{kind}_of_ceiling"] = gflops * 1e9 / best
    return rows, {k: v / 1e9 for k, v in ceiling.items()}


def memory_rows(config, cells, variants, peers, repeats: int = 3) -> list[dict]:
    """Peak memory of a training step (and its time, interleaved) at one config."""
    b, h, t = config
    rows = []
    for cell in cells:
        names = [("gated_rnn", v) for v in variants] + (
            [("flax", None)] if "flax" in peers else [])
        cases = {}
        for name, v in names:
            _, train, _, compiled = _jax_case(name, cell, b, h, t, VARIANTS[v] if v else None)
            train()
            cases[f"gated_rnn[{v}]" if v else name] = (train, _xla_peak_bytes(compiled), [])
        for _ in range(repeats):
            for train, _, times in cases.values():
                times.append(_timed_warm(train))
        rows += [{"cell": cell, "B": b, "H": h, "T": t, "impl": n, "peak_bytes": peak,
                  "train_s": _median(times)} for n, (_, peak, times) in cases.items()]
        if "torch" in peers and _torch() is not None:
            rows.append({"cell": cell, "B": b, "H": h, "T": t, "impl": "torch",
                         "peak_bytes": _torch_peak_bytes(cell, b, h, t), "train_s": None})
    return rows


def long_rows(num_steps: int, cells, b: int = 32, h: int = 128) -> list[dict]:
    """A training step at T = num_steps with remat (run), next to Flax (compiled only)."""
    rows = []
    for cell in cells:
        _, train, comp, compiled = _jax_case("gated_rnn", cell, b, h, num_steps, {"remat": True})
        step_s = _timed(train)
        rows.append({"cell": cell, "B": b, "H": h, "T": num_steps, "impl": "gated_rnn[remat]",
                     "peak_bytes": _xla_peak_bytes(compiled), "train_s": step_s,
                     "compile_s": comp})
        import jax
        import jax.numpy as jnp
        import flax.linen as nn
        model = nn.RNN(nn.OptimizedLSTMCell(h) if cell == "lstm" else nn.GRUCell(h))
        xs = jax.ShapeDtypeStruct((b, num_steps, h), jnp.float32)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((b, 1, h))))
        flax_c = jax.jit(jax.grad(lambda p, x: jnp.mean(model.apply(p, x)))).lower(
            params, xs).compile()
        rows.append({"cell": cell, "B": b, "H": h, "T": num_steps, "impl": "flax",
                     "peak_bytes": _xla_peak_bytes(flax_c), "train_s": None})
    return rows


def seeds_rows(num_seeds: int, cells, repeats: int, b: int = 32, h: int = 128,
               t: int = 100) -> list[dict]:
    """num_seeds models in one vmapped training step vs num_seeds separate steps, and the
    vmapped step with the seeds split over the local devices (the trainer's shard=seeds)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from gated_rnn import layers
    rows = []
    mesh = _local_mesh(num_seeds, "seeds")
    n = mesh.size
    for cell in cells:
        spec = layers.Spec(cell=cell, input_size=h, hidden_size=h)
        keys = jax.random.split(jax.random.key(0), num_seeds)
        params = jax.vmap(lambda k: layers.init(k, spec))(keys)
        xs = jax.random.normal(jax.random.key(1), (num_seeds, b, t, h), jnp.float32)
        grad = jax.grad(lambda p, x: jnp.mean(layers.apply(spec, p, x)[0]))
        one = jax.jit(grad)
        many = jax.jit(jax.vmap(grad))
        split = jax.jit(jax.shard_map(jax.vmap(grad), mesh=mesh, in_specs=P("seeds"),
                                      out_specs=P("seeds"), check_vma=False))
        on_mesh = jax.device_put((params, xs), NamedSharding(mesh, P("seeds")))
        singles = [jax.tree_util.tree_map(lambda a, s=s: a[s], params) for s in range(num_seeds)]
        cases = {"separate": lambda: jax.block_until_ready(
                     [one(singles[s], xs[s]) for s in range(num_seeds)]),
                 "vmapped": lambda: jax.block_until_ready(many(params, xs)),
                 "sharded": lambda: jax.block_until_ready(split(*on_mesh))}
        times = {k: [] for k in cases}
        for fn in cases.values():
            fn()
        for _ in range(repeats):
            for k, fn in cases.items():
                times[k].append(_timed_warm(fn))
        sep, vm, sh = (_median(times[k]) for k in ("separate", "vmapped", "sharded"))
        rows.append({"cell": cell, "B": b, "H": h, "T": t, "seeds": num_seeds,
                     "separate_s": sep, "vmapped_s": vm, "speedup": sep / vm,
                     "sharded_devices": n, "sharded_s": sh, "sharded_speedup": sep / sh})
    return rows


# ----------------------------------------------------------------------------- output


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{1e3 * s:.1f} ms" if s < 10 else f"{s:.2f} s"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2 ** 20:.0f} MB"


def format_table(results: dict) -> str:
    """Markdown tables of the results."""
    out = []
    c = results["ceiling_gflops"]
    out.append("matmul ceiling (float32): " +
               ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in c.items()))
    out.append("")
    out.append("| cell | B,H,T | impl | fwd | × | GFLOP/s (ceil) | train | × | GFLOP/s (ceil) "
               "| compile fwd / train |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["speed"]:
        comp = r["compile_s"]
        out.append(
            f"| {r['cell']} | {r['B']},{r['H']},{r['T']} | {r['impl']} | {_ms(r['fwd_s'])} | "
            f"{r['fwd_ratio']:.2f} | {r['fwd_gflops']:.0f} ({100 * r['fwd_of_ceiling']:.0f}%) | "
            f"{_ms(r['train_s'])} | {r['train_ratio']:.2f} | {r['train_gflops']:.0f} "
            f"({100 * r['train_of_ceiling']:.0f}%) | "
            + ("-" if comp is None else f"{comp['fwd']:.1f} / {comp['train']:.1f} s") + " |")
    for key, title in (("memory", "peak memory of a training step"),
                       ("long", "long sequences (remat)")):
        if results.get(key):
            out += ["", f"{title}:", "", "| cell | B,H,T | impl | peak | train step |",
                    "|---|---|---|---|---|"]
            out += [f"| {r['cell']} | {r['B']},{r['H']},{r['T']} | {r['impl']} | "
                    f"{_mb(r['peak_bytes'])} | {_ms(r['train_s'])} |" for r in results[key]]
    if results.get("seeds"):
        out += ["", "| cell | seeds × (B,H,T) | separate steps | one vmapped step | speedup "
                "| vmapped, seeds split over devices | speedup |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['cell']} | {r['seeds']} × ({r['B']},{r['H']},{r['T']}) | "
                f"{_ms(r['separate_s'])} | {_ms(r['vmapped_s'])} | {r['speedup']:.2f}× | "
                f"{_ms(r['sharded_s'])} on {r['sharded_devices']} | "
                f"{r['sharded_speedup']:.2f}× |" for r in results["seeds"]]
    return "\n".join(out)


def run(configs, cells, variants, peers, repeats, memory_config, long_steps, seeds,
        side=(32, 128, 100), ceiling_n: int = 2048, memory_variants=("auto", "remat")) -> dict:
    """All rows; the dict main() prints and writes. `side`: (B, H, T) of the long-sequence
    (B, H) and vmapped-seeds (B, H, T) rows; `ceiling_n`: size of the ceiling's matmul."""
    unknown = [v for v in (*variants, *memory_variants) if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; valid: {sorted(VARIANTS)}")
    bad_cells = [c for c in cells if c not in NUM_GATES]
    if bad_cells:
        raise ValueError(f"--cells: unknown {bad_cells}; valid: {sorted(NUM_GATES)}")
    bad_peers = [p for p in peers if p not in ("flax", "torch")]
    if bad_peers:
        raise ValueError(f"--peers: unknown {bad_peers}; valid: ['flax', 'torch']")
    import jax
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
               "jax": jax.__version__, "backend": jax.default_backend(),
               "devices": jax.local_device_count(),
               "load_avg_before": os.getloadavg()}
    results["speed"], results["ceiling_gflops"] = speed_rows(configs, cells, variants, peers,
                                                             repeats, ceiling_n)
    if memory_config:
        results["memory"] = memory_rows(memory_config, cells, memory_variants, peers, repeats)
    b, h, t = side
    if long_steps:
        results["long"] = long_rows(long_steps, cells, b, h)
    if seeds:
        results["seeds"] = seeds_rows(seeds, cells, repeats, b, h, t)
    results["load_avg_after"] = os.getloadavg()
    results["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return results


def main(argv):
    del argv
    import jax
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices or cores or 1)
    side = (32, 128, 100)
    if FLAGS.quick:
        configs, repeats, memory, long_steps, seeds = [(4, 16, 20)], 2, (4, 16, 50), 200, 4
        side = (4, 16, 20)
    else:
        configs, repeats = _parse_configs(FLAGS.configs), FLAGS.repeats
        memory = tuple(_parse_configs(FLAGS.memory_config.split(","))[0]) \
            if FLAGS.memory_config else None
        long_steps, seeds = FLAGS.long_steps, FLAGS.seeds
    if repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, got {repeats}")
    results = run(configs, FLAGS.cells, FLAGS.variants, FLAGS.peers, repeats, memory,
                  long_steps, seeds, side, memory_variants=FLAGS.memory_variants)
    print(format_table(results))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
