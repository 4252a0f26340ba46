r"""The GPU check: everything this project has never run on a GPU, in one command (<= 8 min).

    scripts/gpu_check.sh                      # on a GPU machine: all four parts
    scripts/gpu_check.sh --dry                # anywhere: tiny sizes, GPU-only parts skipped

Parts, each a section of the JSON (`--out`, default gpu_check.json) and a row group of the
table (the same path with .md), printed at the end:
  1. tests     the GPU-relevant subset of the suite (fast paths vs the step loop, bfloat16,
               cuDNN packing, forward mode, the Flax conventions' half precision) on the GPU.
  2. equality  fused vs scan vs cuDNN on this backend: outputs, final carries and gradients of
               an LSTM (and a GRU: fused vs scan) with lengths and reverse, float32, as max abs
               differences; bfloat16 matmuls (matmul_dtype) and a bfloat16 Spec vs float32.
  3. bench     forward and training-step time at the four README configs (B, H, T) =
               (32, 128, 100), (32, 128, 1000), (256, 128, 1000), (256, 512, 100), I = H:
               gated_rnn (auto, cudnn), Flax `nn.RNN(nn.OptimizedLSTMCell)`,
               `jax.experimental.rnn.lstm` (cuDNN), medians of `--repeats`.
  4. training  a short copy and adding run of the experiments CLI (exit code, wall time, final
               eval metrics).
Without a GPU (or with --dry) parts 1, 3, 4 and the cuDNN rows print "skipped: ..." and the
rest runs at tiny sizes: `tests/test_gpu_check.py` runs that, so the script cannot rot. A part
that would pass the time budget (`--budget_s`) is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [(32, 128, 100), (32, 128, 1000), (256, 128, 1000), (256, 512, 100)]
TEST_SUBSET = ["tests/test_fused.py", "tests/test_flax_conventions.py",
               "tests/test_scan.py::test_forward_mode_jvp_works_on_the_default_path",
               "tests/test_scan.py::test_traced_lengths_outside_zero_to_t_are_clamped_never_nan"]


def _skip(reason: str) -> dict:
    print(f"  skipped: {reason}", flush=True)
    return {"skipped": reason}


def run_tests(timeout_s: float) -> dict:
    """Part 1: pytest on the GPU-relevant subset; returns counts and the tail of the output."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *TEST_SUBSET], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(ROOT)})
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    print(f"  pytest exit {proc.returncode}: {tail[0]}", flush=True)
    return {"exit_code": proc.returncode, "summary": tail[0],
            "wall_s": time.perf_counter() - start,
            "output_tail": proc.stdout[-3000:] + proc.stderr[-1000:]}


def equality(gpu: bool, b: int, t: int, h: int, *, dry: bool = False) -> dict:
    """Part 2: max abs differences between the implementations, values and gradients (dry: the
    LSTM rows only, no bfloat16-matmul rows: fewer compiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gated_rnn import gru, layers, lstm, scan

    key = jax.random.key(0)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (b, t, h))
    lengths = jnp.asarray(np.linspace(1, t, b).round().astype(np.int32))
    out = {}

    def run_all(cell, params, impl, **kw):
        def loss(p, x):
            carry, ys = scan.run(cell, p, x, seq_lengths=lengths, reverse=True, impl=impl, **kw)
            return jnp.sum(ys ** 2) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(carry)), (
                carry, ys)
        (_, (carry, ys)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1),
                                                             has_aux=True))(params, xs)
        return {"ys": ys, "carry": carry, "grads": grads}

    def max_diff(a, b):
        return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - y)))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    cells = (("lstm", lstm, lstm.init_params(key, h, h)),
             ("gru", gru.cell(), gru.init_params(key, h, h)))
    for name, cell, params in cells[:1] if dry else cells:
        ref = run_all(cell, params, "scan")
        impls = ["fused"] + (["cudnn"] if name == "lstm" else [])
        for impl in impls:
            row = f"{name} {impl} vs scan"
            if impl == "cudnn" and not gpu:
                out[row] = _skip("cudnn needs a GPU")
                continue
            got = run_all(cell, params, impl)
            out[row] = {k: max_diff(got[k], ref[k]) for k in ("ys", "carry", "grads")}
            print(f"  {row}: {out[row]}", flush=True)
        if dry:
            continue
        got = run_all(cell, params, "fused", matmul_dtype=jnp.bfloat16)
        out[f"{name} fused bf16 matmuls vs scan f32"] = {k: max_diff(got[k], ref[k])
                                                         for k in ("ys", "carry")}
    spec = layers.Spec("lstm", h, h, dtype=jnp.bfloat16)
    half = layers.init(key, spec)
    full = jax.tree.map(lambda a: a.astype(jnp.float32), half)
    ys_half, _ = jax.jit(lambda p, x: layers.apply(spec, p, x))(half, xs.astype(jnp.bfloat16))
    ys_full, _ = jax.jit(lambda p, x: layers.apply(layers.Spec("lstm", h, h), p, x))(full, xs)
    out["lstm bf16 Spec vs f32"] = {"ys": max_diff(ys_half, ys_full)}
    print(f"  lstm bf16 Spec vs f32: {out['lstm bf16 Spec vs f32']}", flush=True)
    return out


def _experimental_lstm_case(b: int, h: int, t: int):
    """(fwd, train) thunks for `jax.experimental.rnn.lstm` (cuDNN) at I = H."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import rnn as jrnn

    key = jax.random.key(0)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (b, t, h))
    weights = jrnn.init_lstm_weight(key, h, h, 1, False)
    h0 = jnp.zeros((1, b, h))
    lengths = jnp.full((b,), t, jnp.int32)

    def apply(w, x):
        return jrnn.lstm(x, h0, h0, w, lengths, h, h, 1, 0.0, False)[0]
    fwd = jax.jit(apply)
    train = jax.jit(jax.grad(lambda w, x: jnp.mean(apply(w, x))))
    return (lambda: fwd(weights, xs).block_until_ready(),
            lambda: train(weights, xs).block_until_ready())


def bench(configs, repeats: int, gpu: bool) -> list[dict]:
    """Part 3: medians of forward and training-step times per implementation and config."""
    from benchmarks import bench as b_mod

    rows = []
    for b, h, t in configs:
        cases = {"gated_rnn[auto]": b_mod._jax_case("gated_rnn", "lstm", b, h, t)[:2],
                 "flax[OptimizedLSTMCell]": b_mod._jax_case("flax", "lstm", b, h, t)[:2]}
        if gpu:
            cases["gated_rnn[cudnn]"] = b_mod._jax_case("gated_rnn", "lstm", b, h, t,
                                                        {"impl": "cudnn"})[:2]
            cases["jax.experimental.rnn"] = _experimental_lstm_case(b, h, t)
        times = {n: {"fwd": [], "train": []} for n in cases}
        for fwd, train in cases.values():
            fwd(), train()
        for _ in range(repeats):
            for n, (fwd, train) in cases.items():
                times[n]["fwd"].append(b_mod._timed_warm(fwd))
                times[n]["train"].append(b_mod._timed_warm(train))
        ref = times["gated_rnn[auto]"]
        for n, tm in times.items():
            row = {"B": b, "H": h, "T": t, "impl": n, "fwd_s": b_mod._median(tm["fwd"]),
                   "train_s": b_mod._median(tm["train"])}
            row["fwd_ratio"] = row["fwd_s"] / b_mod._median(ref["fwd"])
            row["train_ratio"] = row["train_s"] / b_mod._median(ref["train"])
            rows.append(row)
            print(f"  B={b} H={h} T={t} {n}: fwd {row['fwd_s'] * 1e3:.2f} ms, "
                  f"train {row['train_s'] * 1e3:.2f} ms", flush=True)
    return rows


def training(steps: int, timeout_s: float) -> dict:
    """Part 4: short copy and adding runs of the CLI; exit code, wall time, final metrics."""
    out = {}
    for task in ("copy", "adding"):
        with tempfile.TemporaryDirectory() as workdir:
            cmd = [sys.executable, "-m", "experiments.main",
                   f"--config=experiments/configs/{task}.py", f"--workdir={workdir}",
                   f"--config.train.steps={steps}"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(ROOT)})
            result = Path(workdir, "result.json")
            out[task] = {"exit_code": proc.returncode, "wall_s": time.perf_counter() - start,
                         "steps": steps, "command": " ".join(cmd[1:]),
                         "result": json.loads(result.read_text()) if result.exists() else None,
                         "stderr_tail": proc.stderr[-1500:]}
            print(f"  {task}: exit {proc.returncode} in {out[task]['wall_s']:.0f} s", flush=True)
    return out


def table(results: dict) -> str:
    """The JSON as a Markdown table per part."""
    lines = [f"# gpu_check on {results['backend']} ({results['devices']}); "
             f"{'dry' if results['dry'] else 'full'} run, {results['wall_s']:.0f} s", ""]
    for part in ("tests", "equality", "bench", "training"):
        value = results.get(part)
        lines.append(f"## {part}")
        if isinstance(value, dict) and "skipped" in value:
            lines.append(f"skipped: {value['skipped']}")
        elif part == "tests":
            lines.append(f"pytest exit {value['exit_code']}: {value['summary']}")
        elif part == "equality":
            lines += ["| comparison | max abs diff |", "|---|---|"]
            for name, diffs in value.items():
                text = (f"skipped: {diffs['skipped']}" if "skipped" in diffs else
                        ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
                lines.append(f"| {name} | {text} |")
        elif part == "bench":
            lines += ["| B | H | T | impl | fwd ms | train ms | fwd ratio | train ratio |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in value:
                lines.append(f"| {r['B']} | {r['H']} | {r['T']} | {r['impl']} | "
                             f"{r['fwd_s'] * 1e3:.2f} | {r['train_s'] * 1e3:.2f} | "
                             f"{r['fwd_ratio']:.2f} | {r['train_ratio']:.2f} |")
        elif part == "training":
            lines += ["| task | steps | exit | wall s | eval loss / baseline |",
                      "|---|---|---|---|---|"]
            for task, r in value.items():
                seeds = (r["result"] or {}).get("seeds", [])
                final = [round(s.get("normalized_loss", float("nan")), 4) for s in seeds]
                lines.append(f"| {task} | {r['steps']} | {r['exit_code']} | {r['wall_s']:.0f} | "
                             f"{final or 'no result.json'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true",
                        help="tiny sizes, GPU-only parts skipped (the default without a GPU)")
    parser.add_argument("--out", default="gpu_check.json", help="JSON path (table: .md)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--budget_s", type=float, default=450.0,
                        help="skip the parts that would start past this many seconds")
    args = parser.parse_args(argv)

    import jax
    start = time.perf_counter()
    gpu = jax.default_backend() == "gpu"
    dry = args.dry or not gpu
    if dry and not args.dry:
        print("no GPU (backend %r): dry mode, GPU-only parts skipped" % jax.default_backend())
    results = {"backend": jax.default_backend(), "devices": str(jax.devices()), "dry": dry,
               "jax": jax.__version__}
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731

    print("1/4 tests", flush=True)
    results["tests"] = (_skip("dry mode: the CPU suite runs these") if dry
                        else run_tests(timeout_s=max(left() - 240, 60)))
    print("2/4 equality", flush=True)
    results["equality"] = equality(gpu, *((3, 7, 4) if dry else (16, 200, 128)), dry=dry)
    print("3/4 bench", flush=True)
    if dry:
        results["bench"] = _skip("dry mode: the benchmark needs a GPU to mean anything")
    elif left() < 150:
        results["bench"] = _skip(f"time budget: {left():.0f} s left")
    else:
        results["bench"] = bench(CONFIGS, args.repeats, gpu)
    print("4/4 training", flush=True)
    if dry:
        results["training"] = _skip("dry mode: training runs need a GPU to be short")
    elif left() < 30:
        results["training"] = _skip(f"time budget: {left():.0f} s left")
    else:
        results["training"] = training(args.train_steps, timeout_s=max(left(), 30) / 2)
    results["wall_s"] = time.perf_counter() - start

    out = Path(args.out)
    out.write_text(json.dumps(results, indent=1, default=str))
    text = table(results)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    failed = (results["tests"].get("exit_code", 0) != 0
              or any(r.get("exit_code", 0) != 0 for r in (results["training"].values()
                                                          if "skipped" not in results["training"]
                                                          else [])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
