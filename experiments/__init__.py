"""Experiments on top of gated_rnn: long-dependency tasks, their configs, one trainer, sweeps.

    python -m experiments.main --config=experiments/configs/copy.py --workdir=runs/copy_T100

Modules (imports point down this list; tests/test_experiments.py keeps it complete):
  main        flags -> train.train_and_evaluate(config, workdir); exit codes
  horizon     adaptive length search per (task, cell, init) over sweep points -> horizon.json
  sweep       grid -> one run per point -> report (+ probe); `run_point` / `run_points`
  timescales  forget-gate timescales per unit of trained runs -> timescales.json / .png
  probe       gradient flow over time of trained runs (uses report's plotting helpers)
  report      every result.json under a sweep root -> results.csv, summary.md, plots
  train       state, train_step, eval_step, evaluate, train_and_evaluate (reads the Setup)
  resources   does a run fit in memory: an estimate checked before anything is compiled
  setup       config -> typed, hashable Setup, validated once: the only reader of config fields
  model       encoded inputs -> gated_rnn.layers stack -> linear readout
  tasks       copy, adding: data + loss + metrics (`tasks.TASKS`)
  configs     one get_config(arg) per task; recipes.py the papers' recipes; sweeps.py the grids
  checkpoint  leaf: orbax safety (damaged steps, config mismatch, disk, signals)
  parallel    leaf: devices, meshes, data parallelism, jax.distributed, process settings
  outputs     leaf: metrics.jsonl, TensorBoard, result.json, the run's clock
  checks      leaf: the "integer >= k" and "one of these names" checks with their messages
  files       leaf: atomic_write, the one way every writer replaces a file
"""
