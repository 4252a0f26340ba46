"""Small test helpers: tree comparison, a Python loop over a cell's step, the smoke training
config."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.configs import adding as adding_config
from experiments.configs import copy as copy_config
from gated_rnn import scan

SMOKE_CONFIGS = {"copy": copy_config, "adding": adding_config}


def assert_trees_close(actual, expected, *, rtol=1e-6, atol=0.0, err_msg=""):
    """Asserts two pytrees have the same structure and allclose leaves."""
    a_leaves, a_def = jax.tree_util.tree_flatten(actual)
    e_leaves, e_def = jax.tree_util.tree_flatten(expected)
    assert a_def == e_def, f"{err_msg}: structures differ: {a_def} vs {e_def}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol,
                                   err_msg=f"{err_msg} leaf {i}")


def step_loop(cell, params, xs, carry0, lengths, reverse):
    """A Python loop over `cell.step`, the whole batch at once: (final carry, ys [B, T, P]).

    Lengths mask the steps (carry held, output zero); reverse with lengths reverses each
    sequence inside its valid part (`scan.reverse_padded`, pinned in test_scan.py).
    """
    steps = xs.shape[1]
    if reverse and lengths is not None:
        xs = scan.reverse_padded(xs, jnp.asarray(lengths))
    carry, ys = carry0, [None] * steps
    for t in (reversed(range(steps)) if reverse and lengths is None else range(steps)):
        new, y = cell.step(params, carry, xs[:, t])
        if lengths is not None:
            m = (t < jnp.asarray(lengths))[:, None]
            new = jax.tree_util.tree_map(lambda n, o: jnp.where(m, n, o), new, carry)
            y = jnp.where(m, y, jnp.zeros_like(y))
        carry, ys[t] = new, y
    ys = jnp.stack(ys, axis=1)
    if reverse and lengths is not None:
        ys = scan.reverse_padded(ys, jnp.asarray(lengths))
    return carry, ys


def smoke_config(task: str = "copy", **overrides) -> ml_collections.ConfigDict:
    """The task's `smoke` config (experiments/configs/<task>.py) with `overrides` set in order.

    Args:
      task: "copy" or "adding".
      **overrides: field -> value, a dotted name for a nested field, e.g. `seed=1` or
        `**{"train.learning_rate": 0.01}`. ConfigDict itself refuses a value of another type
        (an int for a bool, a float for an int).
    """
    config = SMOKE_CONFIGS[task].get_config("smoke")
    for name, value in overrides.items():
        section, _, field = name.rpartition(".")
        (config[section] if section else config)[field] = value
    return config
