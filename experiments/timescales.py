"""Forget-gate timescales: each unit's characteristic memory time, at init and after training.

For a gated cell, the gate that keeps the state (LSTM f, GRU z in its keep direction, UR-LSTM
the effective gate g, minGRU / minLSTM a; `gated_rnn.trace`, key "keep") sets how fast a unit
forgets: a constant keep gate k halves the state every -log 2 / log k steps. Per unit,

    tau = -1 / mean(log keep)

the mean over a fixed batch of task sequences and their steps (a geometric-mean keep gate), for
every layer's units. Chrono init sets tau in [~2, T_max] by design (Tallec & Ollivier 2018);
this shows how training moves it, and whether units with tau >= T exist where the task is
solved. The plain and ReLU RNN have no gate and are skipped. Runs are loaded as the gradient
probe loads them (`experiments.probe`: the run's init, its latest checkpoint, seed index 0).

    python -m experiments.timescales --root=runs/horizon_adding           # every finished run
    python -m experiments.timescales --workdirs=runs/a,runs/b --out=runs/ts

Writes `timescales.json` (every unit's tau at init and trained, the fraction with tau >= T) and
`timescales.png` (one histogram panel per run, log x, a line at T) into `--out` (default: the
root).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import checkpoint, files, probe, report, setup, train
from gated_rnn import layers, trace

TAU_CAP = 1e9  # a unit whose keep gate rounds to 1 is reported at this (JSON has no inf)


@functools.partial(jax.jit, static_argnums=0)
def unit_timescales(spec: layers.Spec, params: tuple, xs: jax.Array) -> jax.Array:
    """tau `[num_layers * directions * H]` of every unit of a stack on inputs xs `[B, T, I]`."""
    cell = spec.cell_fns
    x, taus = xs, []
    for layer in params:
        outs = []
        for d, p in enumerate(layer):
            _, seen = trace.run(cell, p, x, reverse=d == 1)
            keep = seen["keep"].astype(jnp.float32)
            mean_log = jnp.mean(jnp.log(jnp.maximum(keep, 1e-30)), axis=(0, 1))   # [H]
            taus.append(jnp.where(mean_log < 0, -1.0 / jnp.minimum(mean_log, -1 / TAU_CAP),
                                  TAU_CAP))
            outs.append(seen["h"])
        x = jnp.concatenate(outs, axis=-1)
    return jnp.concatenate(taus)


def has_keep_gate(spec: layers.Spec) -> bool:
    """Whether the spec's cell shows a keep gate (`trace`): every gated cell; not the RNNs."""
    return getattr(spec.cell_fns, "internals", None) is not None


def timescales_run(workdir: str, *, batch_size: int = 16) -> dict[str, Any] | None:
    """One run's taus at init and (with a checkpoint) trained; None for a cell without gates."""
    config = probe.load_config(workdir)
    s = setup.build(config)
    spec = s.model.spec
    if not has_keep_gate(spec):
        return None
    state = train.create_train_state(s, s.run.seed, s.run.num_seeds)
    manager = checkpoint.manager(workdir, s.run.max_checkpoints)
    try:
        trained = checkpoint.restore_latest(manager, state)[0]
    finally:
        manager.close()
    batch = s.task.sample(jax.random.key(probe.PROBE_KEY), batch_size)
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)  # noqa: E731  (seed index 0)

    def taus(params):
        return np.asarray(unit_timescales(spec, first(params)["rnn"], batch.inputs)).tolist()

    m = config.to_dict()["model"]
    out = {"workdir": workdir, "task": s.task.name, "seq_len": s.run.seq_len,
           "cell": m["cell"], "gru_variant": m["gru_variant"], "init": m["init"],
           "hidden_size": m["hidden_size"], "seed": s.run.seed,
           "trained_step": None if trained is None else int(trained.step[0]),
           "at_init": taus(state.params),
           "trained": None if trained is None else taus(trained.params)}
    for when in ("at_init", "trained"):
        if out[when] is not None:
            out[f"{when}_frac_ge_T"] = float(np.mean(np.asarray(out[when]) >= out["seq_len"]))
    return out


def plot_timescales(runs: list[dict[str, Any]], path: str) -> None:
    """One histogram panel per run: tau at init (outline) and trained (filled), log x, T."""
    plt = report.pyplot()
    cols = min(4, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, runs):
        values = [v for v in (r["at_init"], r["trained"]) if v is not None]
        hi = max(max(v) for v in values)
        bins = np.logspace(0, np.log10(max(hi, r["seq_len"]) * 1.5), 30)
        ax.hist(np.clip(r["at_init"], 1, None), bins=bins, histtype="step", color="gray",
                linewidth=1.5, label="init")
        if r["trained"] is not None:
            ax.hist(np.clip(r["trained"], 1, None), bins=bins, alpha=0.6,
                    color=report.styles([_setting(r)])[_setting(r)]["color"],
                    label=f"step {r['trained_step']}")
        ax.axvline(r["seq_len"], color="k", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(f"{r['task']} T={r['seq_len']} {r['cell']}/{r['init']}", fontsize=9)
        ax.set_xlabel("tau = -1 / mean log(keep)  (steps)", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("per-unit memory timescales (dotted: T)", fontsize=10)
    fig.tight_layout()
    report.save_figure(fig, plt, path)


def _setting(r: dict[str, Any]) -> report.Setting:
    return report.Setting(r["task"], r["cell"], r["gru_variant"] if r["cell"] == "gru" else "",
                          r["init"], r["hidden_size"])


def write_timescales(runs: list[dict[str, Any]], out: str) -> dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {n: os.path.join(out, n) for n in ("timescales.json", "timescales.png")}
    files.atomic_write(paths["timescales.json"], json.dumps(runs, indent=1) + "\n")
    plot_timescales(runs, paths["timescales.png"])
    return paths


def summary(runs: list[dict[str, Any]]) -> str:
    lines = []
    for r in runs:
        for when in ("at_init", "trained"):
            if r[when] is not None:
                t = np.asarray(r[when])
                lines.append(f"{r['task']} T={r['seq_len']} {r['cell']}/{r['init']} {when:>7}: "
                             f"tau median {np.median(t):.3g}, max {t.max():.3g}, "
                             f"units with tau >= T {r[f'{when}_frac_ge_T']:.0%}")
    return "\n".join(lines)


def _define_flags() -> None:
    """Flags exist only when this module runs as a program, so importing it defines none."""
    flags.DEFINE_string("root", None, "a sweep / horizon root: every finished run under it")
    flags.DEFINE_list("workdirs", None, "or: these run directories (then --out is needed)")
    flags.DEFINE_string("out", None, "output directory (default: the root)")
    flags.DEFINE_integer("batch_size", 16, "task sequences the keep gate is averaged over")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if bool(f.root) == bool(f.workdirs):
        raise app.UsageError("give either --root or --workdirs (with --out)")
    if f.workdirs and not f.out:
        raise app.UsageError("--workdirs needs --out")
    workdirs = report.find_results(f.root) if f.root else f.workdirs
    runs = [r for r in (timescales_run(w, batch_size=f.batch_size) for w in workdirs) if r]
    if not runs:
        raise app.UsageError("no run of a gated cell found")
    print(summary(runs))
    for name, path in write_timescales(runs, f.out or f.root).items():
        print(f"{name:>16}: {path}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
