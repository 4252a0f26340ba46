"""Experiments on top of gated_rnn: long-dependency tasks, their configs, one trainer, sweeps.

    python -m experiments.main --config=experiments/configs/copy.py --workdir=runs/copy_T100

Modules: tasks (copy, adding), configs (one per task), model (encoding -> stack -> readout),
train (the training loop), main (the only file with flags).
"""
