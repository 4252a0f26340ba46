"""Gradient-flow probe: how far back in time does a cell's gradient signal reach?

For a run's model, at initialisation and after training, against the distance k = L - 1 - t
from the last input step (L = the task's input length):

- state gain `||dh_{L-1}/ds_t||_F / sqrt(H)`: the root-mean-square singular value of the
  Jacobian of the last layer's final output h_{L-1} with respect to its whole carry s_t after
  step t (h for the RNN and GRU; [h, c] for the LSTM, whose memory lives in c). It is measured by
  adding a zero perturbation to the carry after every step and differentiating with respect to
  it (the exact Jacobian: H backward passes); k = 0 gives 1. For a linear RNN
  h_t = h_{t-1} W + x_t U it is `||W^k||_F / sqrt(H)`, a case the tests pin. (The spectral norm
  would need an SVD per step and sequence, which cost more than the Jacobian itself.)
- input gradient `|| d loss_b / d x_{b,t} ||_2`: the task loss of one sequence (its own mean
  over its steps, as in training) differentiated with respect to the encoded input at step t.

Both are averaged over a fixed batch of task sequences (the probe's own key). The "init" params
are exactly the run's starting point (`train.create_train_state` with the run's seed); "trained"
are its latest checkpoint. With several seeds, seed index `--seed_index` is probed.

    python -m experiments.probe --root=runs/demo --task=adding --seq_len=50
    python -m experiments.probe --workdirs=runs/a,runs/b --out=runs/probe

Writes `probe.json` (every number), `probe.csv` (one row per run, when, distance) and
`probe.png` (two panels, log y) into `--out` (default: ROOT/probe_<task>_T<T>).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib
import io
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from experiments import model as model_lib
from experiments import checkpoint, files, report, setup, tasks, train
from gated_rnn import layers

PROBE_KEY = 20240601  # a fixed probe batch, independent of every training and eval stream


# ----------------------------------------------------------------------------- the measures


def state_gains(cell: Any, params: Any, xs: jax.Array) -> jax.Array:
    """RMS singular values `||dh_{L-1}/ds_t||_F / sqrt(H)` for every step t of every sequence.

    Args:
      cell: a cell module or object with `project`, `recur`, `zero_carry` (as `scan.run` takes).
      params: the cell's Params.
      xs: [B, L, I] inputs of the layer.

    Returns:
      [B, L] norms; entry [b, t] is for distance k = L - 1 - t (so [:, -1] is 1).
    """
    xp = cell.project(params, xs)                        # [B, L, G]

    def final_h(xp_one, deltas):
        def body(carry, inputs):
            xp_t, delta = inputs
            carry, _ = cell.recur(params, carry, xp_t)
            return jax.tree.map(jnp.add, carry, delta), None

        carry, _ = jax.lax.scan(body, cell.zero_carry(params, (1,)), (xp_one[:, None], deltas))
        return carry.h[0]                                # [H]

    def one(xp_one):
        zeros = jax.tree.map(lambda c: jnp.zeros((xp_one.shape[0], *c.shape), c.dtype),
                             cell.zero_carry(params, (1,)))
        jac = jax.jacrev(final_h, argnums=1)(xp_one, zeros)   # fields [H, L, 1, H_field]
        jac = jnp.concatenate([j[:, :, 0] for j in jax.tree.leaves(jac)], axis=-1)
        return jnp.sqrt(jnp.sum(jnp.square(jac), axis=(0, 2)) / jac.shape[0])  # [L]

    return jax.lax.map(one, xp)


def input_gradients(model: model_lib.Model, task: tasks.Task, params: Any,
                    batch: tasks.Batch) -> jax.Array:
    """Norms of d loss_b / d x_{b,t}: [B, L] for the model's task loss of each sequence b."""
    def total_loss(inputs):
        outputs = model_lib.apply(model, params, inputs)
        loss, _ = task.loss_and_metrics(outputs, batch._replace(inputs=inputs))
        return loss * inputs.shape[0]  # the batch mean times B: d/dx_b is d loss_b / dx_b

    grads = jax.grad(total_loss)(batch.inputs)           # [B, L, I]
    return jnp.linalg.norm(grads, axis=-1)


def last_layer_inputs(spec: layers.Spec, params: tuple, xs: jax.Array) -> jax.Array:
    """What the stack's last layer reads: xs, or the outputs of the layers below it."""
    if spec.num_layers == 1:
        return xs
    below = dataclasses.replace(spec, num_layers=spec.num_layers - 1)
    ys, _ = layers.apply(below, params[:-1], xs)
    return ys


@functools.partial(jax.jit, static_argnums=(0, 1))
def measure(model: model_lib.Model, task: tasks.Task, params: Any,
            batch: tasks.Batch) -> dict[str, jax.Array]:
    """Both measures of one model on one batch, averaged over the batch: {name: [L]}."""
    spec = model.spec
    xs = last_layer_inputs(spec, params["rnn"], batch.inputs)
    gains = state_gains(spec.cell_fns, params["rnn"][-1][0], xs)
    return {"state_gain": gains.mean(axis=0),
            "input_grad": input_gradients(model, task, params, batch).mean(axis=0)}


# ----------------------------------------------------------------------------- one run


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was started with (its config.json, else its result.json).

    The stored values go onto the task's current `get_config()`, so a run made before a field
    was added still loads (the new field keeps its default).
    """
    for name, pick in (("config.json", lambda d: d), (report.RESULT_FILE, lambda d: d["config"])):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                stored = pick(json.load(f))
            config = importlib.import_module(
                f"experiments.configs.{stored['task']['name']}").get_config()
            _merge(config, stored)
            return config
    raise ValueError(f"--workdirs: {workdir!r} holds neither config.json nor result.json")


def _merge(node: ml_collections.ConfigDict, stored: dict[str, Any]) -> None:
    for key, value in stored.items():
        if key not in node:
            continue  # a field since removed
        if isinstance(node[key], ml_collections.ConfigDict):
            _merge(node[key], value)
        else:
            node[key] = tuple(value) if isinstance(value, list) else value  # JSON has no tuple


def probe_run(workdir: str, *, batch_size: int = 8, seed_index: int = 0) -> dict[str, Any]:
    """Probes one run at init and (if it has a checkpoint) after training.

    Returns:
      {"workdir", "task", "seq_len", "cell", "gru_variant", "init", "hidden_size", "seed",
       "trained_step" (None without a checkpoint), "distance" [L],
       "at_init": {measure: [L]}, "trained": {measure: [L]} or None}; lists index by
      distance.
    """
    config = load_config(workdir)
    s = setup.build(config)
    if not 0 <= seed_index < s.run.num_seeds:
        raise ValueError(f"--seed_index: expected 0 <= index < num_seeds={s.run.num_seeds}, "
                         f"got {seed_index}")
    if s.model.spec.bidirectional:
        raise ValueError(f"{workdir}: the probe needs a unidirectional stack")
    state = train.create_train_state(s, s.run.seed, s.run.num_seeds)
    manager = checkpoint.manager(workdir, s.run.max_checkpoints)
    try:
        trained = checkpoint.restore_latest(manager, state)[0]
    finally:
        manager.close()
    batch = s.task.sample(jax.random.key(PROBE_KEY), batch_size)
    pick = lambda tree: jax.tree.map(lambda x: x[seed_index], tree)  # noqa: E731

    def run(params):
        values = jax.device_get(measure(s.model, s.task, pick(params), batch))
        return {k: np.asarray(v)[::-1].tolist() for k, v in values.items()}  # by distance

    m = config.to_dict()["model"]  # the names as the config spells them
    return {"workdir": workdir, "task": s.task.name, "seq_len": s.run.seq_len,
            "cell": m["cell"], "gru_variant": m["gru_variant"], "init": m["init"],
            "hidden_size": m["hidden_size"], "seed": s.run.seed + seed_index,
            "trained_step": None if trained is None else int(trained.step[seed_index]),
            "distance": list(range(s.task.length)),
            "at_init": run(state.params),
            "trained": None if trained is None else run(trained.params)}


# ----------------------------------------------------------------------------- outputs

MEASURES = {"state_gain": "|| dh_L / ds_t ||_F / sqrt(H)  (last layer's carry)",
            "input_grad": "|| d loss / d x_t ||  (per sequence)"}


def probe_csv(probes: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["workdir", "task", "seq_len", "cell", "gru_variant", "init", "hidden_size",
                     "when", "step", "distance", *MEASURES])
    for p in probes:
        for when, values, step in (("init", p["at_init"], 0),
                                   ("trained", p["trained"], p["trained_step"])):
            if values is None:
                continue
            for k in p["distance"]:
                writer.writerow([p["workdir"], p["task"], p["seq_len"], p["cell"],
                                 p["gru_variant"], p["init"], p["hidden_size"], when, step, k,
                                 *(f"{values[m][k]:.6g}" for m in MEASURES)])
    return buf.getvalue()


def plot_probes(probes: list[dict[str, Any]], path: str) -> None:
    """Both measures against distance, log y: solid = trained, dashed = at init."""
    plt = report.pyplot()  # the report's Agg setup and colours
    settings = [report.Setting(p["task"], p["cell"], p["gru_variant"] if p["cell"] == "gru"
                               else "", p["init"], p["hidden_size"]) for p in probes]
    style_of = report.styles(settings)
    with_size = report.sizes_differ(settings)
    if len({s.cell for s in settings}) < len(settings):  # e.g. one cell, several inits
        palette = plt.get_cmap("tab10").colors
        style_of = {s: {"color": palette[i % len(palette)]} for i, s in enumerate(settings)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), squeeze=False)
    for ax, (name, title) in zip(axes[0], MEASURES.items()):
        for p, s in zip(probes, settings):
            color = style_of[s]["color"]
            tag = f"{report.label(s, with_size)} {p['task']} T={p['seq_len']}"
            floor = lambda v: np.maximum(np.asarray(v), 1e-30)  # noqa: E731  (log axis)
            ax.plot(p["distance"], floor(p["at_init"][name]), color=color, linestyle="--",
                    linewidth=1.2, label=f"{tag}, init")
            if p["trained"] is not None:
                ax.plot(p["distance"], floor(p["trained"][name]), color=color, linewidth=1.8,
                        label=f"{tag}, step {p['trained_step']}")
        ax.set_yscale("log")
        ax.set_xlabel("distance back in time  k = L - 1 - t  (steps)")
        ax.set_ylabel(title)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="best")
    fig.suptitle("gradient flow: solid = trained, dashed = at initialisation", fontsize=10)
    fig.tight_layout()
    report.save_figure(fig, plt, path)


def write_probes(probes: list[dict[str, Any]], out: str) -> dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {n: os.path.join(out, n) for n in ("probe.json", "probe.csv", "probe.png")}
    files.atomic_write(paths["probe.json"], json.dumps(probes, indent=1) + "\n")
    files.atomic_write(paths["probe.csv"], probe_csv(probes))
    plot_probes(probes, paths["probe.png"])
    return paths


def summary(probes: list[dict[str, Any]], distances: Sequence[int] = (1, 10, 30, 100)) -> str:
    """A small text table: state gain at a few distances, at init and trained, per run."""
    lines = []
    for p in probes:
        ks = [k for k in distances if k < len(p["distance"])] + [len(p["distance"]) - 1]
        for when in ("at_init", "trained"):
            if p[when] is None:
                continue
            gains = " ".join(f"k={k}: {p[when]['state_gain'][k]:.3g}" for k in ks)
            lines.append(f"{p['task']} T={p['seq_len']} {p['cell']}/{p['init']} {when:>7}: "
                         f"state gain {gains}")
    return "\n".join(lines)


def select_workdirs(root: str, task: str, seq_len: int) -> list[str]:
    """The finished runs under `root` of `task` at `seq_len`."""
    found = []
    for workdir in report.find_results(root):
        result = report.read_result(workdir, ".")
        if result["task"] == task and result["seq_len"] == seq_len:
            found.append(workdir)
    if not found:
        raise ValueError(f"--root={root!r}: no finished run of task={task!r} at "
                         f"seq_len={seq_len}")
    return found


# ----------------------------------------------------------------------------- main


def _define_flags() -> None:
    """Flags exist only when this module runs as a program, so importing it defines none."""
    flags.DEFINE_string("root", None, "a sweep root: probe its runs of --task at --seq_len")
    flags.DEFINE_string("task", None, "with --root: the task")
    flags.DEFINE_integer("seq_len", None, "with --root: the sequence length T")
    flags.DEFINE_list("workdirs", None, "or: these run directories (then --out is needed)")
    flags.DEFINE_string("out", None, "output directory (default ROOT/probe_<task>_T<T>)")
    flags.DEFINE_integer("batch_size", 8, "probe sequences (the measures are their mean)")
    flags.DEFINE_integer("seed_index", 0, "which of a run's vmapped seeds to probe")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if bool(f.root) == bool(f.workdirs):
        raise ValueError("give either --root (with --task and --seq_len) or --workdirs")
    if f.root:
        if not f.task or not f.seq_len:
            raise ValueError("--root needs --task and --seq_len")
        workdirs = select_workdirs(f.root, f.task, f.seq_len)
        out = f.out or os.path.join(f.root, f"probe_{f.task}_T{f.seq_len}")
    else:
        if not f.out:
            raise ValueError("--workdirs needs --out")
        workdirs, out = f.workdirs, f.out
    probes = [probe_run(w, batch_size=f.batch_size, seed_index=f.seed_index) for w in workdirs]
    print(summary(probes))
    for name, path in write_probes(probes, out).items():
        print(f"{name:>12}: {path}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
