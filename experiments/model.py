"""The model of every task: encoded inputs -> a gated_rnn.layers stack -> a linear readout.

Inputs arrive encoded by the task (one-hot symbols for copy, value and marker channels for
adding), so the model has no task-specific code: only the readout's place (every step or the last
step) comes from the task.

Readout init: weights Lecun-normal (std 1/sqrt(H)), bias zero, so the initial outputs have
roughly unit scale whatever H is (Flax `Dense`'s default).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from experiments import tasks
from gated_rnn import initializers, layers


class Model(NamedTuple):
    """Static description of the model (hashable): the stack, how to run it, the readout."""

    spec: layers.Spec
    plan: layers.Plan
    output_size: int
    readout: tasks.Readout


DTYPES = ("float32", "bfloat16", "float16")  # model.dtype: the stack's; the readout stays float32


def build(task: tasks.Task, *, cell: Any, gru_variant: Any, hidden_size: int, num_layers: int,
          init: Any, forget_bias: float, chrono_max_len: int | None, unroll: int,
          dtype: str = "float32") -> Model:
    """The Model for `task` (strings are accepted for the enums: cell, gru_variant, init).

    Chrono's T_max is the task's input length unless `chrono_max_len` is set: no dependency in
    the input spans more steps than that.
    """
    spec = layers.Spec(cell=cell, input_size=task.input_size, hidden_size=hidden_size,
                       num_layers=num_layers, gru_variant=gru_variant, init=init,
                       forget_bias=forget_bias, dtype=dtype,
                       chrono_max_len=None if str(getattr(init, "value", init)).lower()
                       != layers.Init.CHRONO.value else
                       task.length if chrono_max_len is None else chrono_max_len)
    return Model(spec=spec, plan=layers.Plan(unroll=unroll), output_size=task.output_size,
                 readout=tasks.Readout(task.readout))


def init(key: jax.Array, model: Model) -> dict[str, Any]:
    """Draws params: {"rnn": stack params, "readout": {"w": [H, O], "b": [O]}}."""
    k_rnn, k_out = jax.random.split(key)
    hidden = layers.output_size(model.spec)
    return {"rnn": layers.init(k_rnn, model.spec),
            "readout": {"w": initializers.lecun_normal()(k_out, (hidden, model.output_size),
                                                         jnp.float32),
                        "b": jnp.zeros((model.output_size,), jnp.float32)}}


def apply(model: Model, params: dict[str, Any], inputs: jax.Array) -> jax.Array:
    """Runs the model.

    Args:
      model: the Model.
      params: from `init`.
      inputs: [B, T, I] encoded inputs.

    Returns:
      [B, T, O] outputs at every step (Readout.ALL) or [B, O] at the last step (Readout.LAST).
    """
    ys, _ = layers.apply(model.spec, params["rnn"], inputs.astype(model.spec.dtype),
                         plan=model.plan)
    ys = ys.astype(params["readout"]["w"].dtype)  # model.dtype is the stack's: readout in float32
    if model.readout is tasks.Readout.LAST:
        ys = ys[:, -1]
    b = params["readout"]["b"]
    return ys @ params["readout"]["w"] + b.reshape((1,) * (ys.ndim - 1) + b.shape)
