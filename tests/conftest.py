"""Shared fixtures: strict rank promotion (no silent broadcasting) and a fixed key.

The suite is compile-bound (hundreds of small XLA programs, each run a few times), so it asks
XLA's CPU backend for unoptimized code generation (`--xla_backend_optimization_level=0`, here and
in the command-line runs the tests start): a third less CPU time, the same HLO and the same
references and tolerances. `GATED_RNN_TEST_XLA_OPT=1` tests at the default level instead.
"""

import os

if not os.environ.get("GATED_RNN_TEST_XLA_OPT"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them once)
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
