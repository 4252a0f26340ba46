"""Small test helpers: tree comparison."""

import jax
import numpy as np


def assert_trees_close(actual, expected, *, rtol=1e-6, atol=0.0, err_msg=""):
    """Asserts two pytrees have the same structure and allclose leaves."""
    a_leaves, a_def = jax.tree_util.tree_flatten(actual)
    e_leaves, e_def = jax.tree_util.tree_flatten(expected)
    assert a_def == e_def, f"{err_msg}: structures differ: {a_def} vs {e_def}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol,
                                   err_msg=f"{err_msg} leaf {i}")
