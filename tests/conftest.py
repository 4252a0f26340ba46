"""Shared fixtures: strict rank promotion (no silent broadcasting) and a fixed key."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
