r"""minGRU / minLSTM (the parallel scan) against our LSTM and GRU: a training step on long
sequences.

    python -m benchmarks.min_cells --out=min_cells.json     # the README table (heavy: T = 10,000)
    python -m benchmarks.min_cells --quick                  # smoke run, tiny sizes

For each (B, H, T) (I = H, one layer), each implementation is jitted and compiled; then the
repeats run them interleaved (each timed call right after an untimed one, as
`benchmarks.bench`), and the table shows medians. A training step is forward +
backward of the mean of all outputs, gradients for all params (as `benchmarks.bench`).
Implementations: `lstm` and `gru` (reset-after) on their default path (fused); `mingru` and
`minlstm` on their two linear-scan paths (`gated_rnn.linear_scan`, the gates for all steps at
once): `[fused]`, a multiply-add loop (AUTO on CPU), and `[parallel]`, the log-depth associative
scan (AUTO on accelerators); and `mingru[scan]`, the same cell's step under `jax.lax.scan`, to
separate what the cell saves (no recurrent matmul) from what each path saves.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["32,128,1000", "32,128,10000"],
                  "B,H,T triples (I = H), separated by commas between triples too.")
flags.DEFINE_list("impls", ["lstm", "gru", "mingru[fused]", "minlstm[fused]",
                            "mingru[parallel]", "minlstm[parallel]", "mingru[scan]"],
                  "cell or cell[impl] (impl: a scan.Impl value); the first is the reference.")
flags.DEFINE_list("repeats", ["5", "3"], "timed repeats per config (one value, or one per "
                  "config); the median is reported.")
flags.DEFINE_bool("quick", False, "tiny sizes and 2 repeats: a smoke run.")
flags.DEFINE_string("out", None, "write the results as JSON here.")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _timed_warm(fn: Callable[[], Any]) -> float:
    """One untimed call, then one timed call (why: `benchmarks.bench._timed_warm`; not imported,
    since importing `bench` defines its flags)."""
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _parse_impl(name: str) -> tuple[str, str]:
    cell, _, impl = name.partition("[")
    return cell, impl.rstrip("]") or "auto"


def training_step(name: str, b: int, h: int, t: int) -> tuple[Callable[[], Any], float]:
    """(a thunk running one compiled training step, its compile seconds) for `name`."""
    import jax
    import jax.numpy as jnp

    from gated_rnn import layers

    cell, impl = _parse_impl(name)
    spec = layers.Spec(cell=cell, input_size=h, hidden_size=h)
    plan = layers.Plan(impl=impl)
    params = layers.init(jax.random.key(0), spec)
    xs = jax.random.normal(jax.random.key(1), (b, t, h))

    def loss(p, x):
        return jnp.mean(layers.apply(spec, p, x, plan=plan)[0])

    start = time.perf_counter()
    step = jax.jit(jax.grad(loss)).lower(params, xs).compile()
    compile_s = time.perf_counter() - start
    return lambda: jax.block_until_ready(step(params, xs)), compile_s


def run(configs, impls, repeats) -> list[dict]:
    """Rows {B, H, T, impl, train_s, train_all_s, ratio (to the first impl), compile_s}."""
    rows = []
    for (b, h, t), n in zip(configs, repeats):
        cases = {name: training_step(name, b, h, t) for name in impls}
        times = {name: [] for name in impls}
        for _ in range(n):
            for name, (fn, _) in cases.items():
                times[name].append(_timed_warm(fn))
        ref = _median(times[impls[0]])
        for name in impls:
            med = _median(times[name])
            rows.append({"B": b, "H": h, "T": t, "impl": name, "train_s": med,
                         "train_all_s": times[name], "ratio": med / ref,
                         "compile_s": cases[name][1]})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a markdown table, one line per (config, impl)."""
    lines = ["| B, H, T | impl | training step | vs first | compile |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['B']}, {r['H']}, {r['T']} | {r['impl']} | {r['train_s'] * 1e3:.1f} ms "
                     f"| {r['ratio']:.2f}x | {r['compile_s']:.1f} s |")
    return "\n".join(lines)


def _parse_configs(values: list[str]) -> list[tuple[int, int, int]]:
    nums = [int(v) for v in ",".join(values).split(",")]
    if not nums or len(nums) % 3:
        raise ValueError(f"--configs: expected B,H,T triples, got {values}")
    return [tuple(nums[i:i + 3]) for i in range(0, len(nums), 3)]


def main(argv):
    del argv
    try:
        configs = [(2, 8, 16), (2, 8, 64)] if FLAGS.quick else _parse_configs(FLAGS.configs)
        repeats = [2] * len(configs) if FLAGS.quick else [int(r) for r in FLAGS.repeats]
        if len(repeats) == 1:
            repeats = repeats * len(configs)
        if len(repeats) != len(configs):
            raise ValueError(f"--repeats: expected 1 or {len(configs)} values, got {repeats}")
        for name in FLAGS.impls:
            from gated_rnn import layers, scan
            cell, impl = _parse_impl(name)
            scan.resolve_impl(layers.Spec(cell, 1, 1).cell_fns, impl)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    rows = run(configs, FLAGS.impls, repeats)
    print(format_table(rows))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
