"""Pins `experiments.timescales`: tau = -1 / mean log(keep) per unit, against a closed form."""

import jax.numpy as jnp
import numpy as np

from experiments import timescales
from gated_rnn import layers


def test_tau_of_a_constant_forget_gate_is_its_closed_form():
    """An LSTM with zero kernels keeps a constant forget gate sigma(b_f): tau = -1/log sigma(b_f);
    a second layer reads the first's outputs and has the same gate; the RNN has none."""
    spec = layers.Spec("lstm", 2, 3, num_layers=2)
    b_f = np.array([0.0, 2.0, 6.0], np.float32)
    zero = lambda i: layers.lstm.Params(w_x=jnp.zeros((i, 12)), w_h=jnp.zeros((3, 12)),  # noqa: E731
                                        b=jnp.zeros(12).at[3:6].set(b_f))
    params = ((zero(2),), (zero(3),))
    tau = timescales.unit_timescales(spec, params, jnp.ones((2, 5, 2)))
    want = -1 / np.log(1 / (1 + np.exp(-b_f.astype(np.float64))))
    # rtol 1e-4: float32 log of a keep gate near 1 (sigma(6) = 0.9975) loses digits.
    np.testing.assert_allclose(tau, np.concatenate([want, want]), rtol=1e-4)
    assert not timescales.has_keep_gate(layers.Spec("rnn", 2, 3))
    assert timescales.has_keep_gate(layers.Spec("mingru", 2, 3))
