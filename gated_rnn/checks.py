"""Input validation shared by the cells, the scan and the stacks.

Errors name what was expected and what was received, so a wrong shape fails at trace time with
a message instead of deep inside a matmul (or, worse, silently broadcasting).
"""

from __future__ import annotations

import enum
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def from_tensor(x: Any) -> Any:
    """A NumPy copy of `x` if it is a torch tensor (duck-typed: torch is never imported), else
    `x` itself (a jax.Array, tracer, NumPy array or nested list passes through).

    The copy matters: `tensor.numpy()` shares the tensor's memory, so a later in-place update
    of the tensor would otherwise change the array. bfloat16 (no NumPy dtype in torch) comes
    back as `jnp.bfloat16` values, exactly.
    """
    if isinstance(x, (jax.Array, np.ndarray)) or not (hasattr(x, "detach")
                                                      and hasattr(x, "numpy")):
        return x
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
        return np.array(x.float().numpy(), dtype=jnp.bfloat16)
    try:
        return np.array(x.numpy(), copy=True)
    except TypeError as e:  # a dtype NumPy has no counterpart for
        raise ValueError(f"cannot convert a torch tensor of dtype {x.dtype} to NumPy ({e}); "
                         f"convert it first, e.g. tensor.float()") from None


def check_input(x: jax.Array, input_size: int, dtype, *, what: str = "x", min_rank: int = 1,
                layout: str = "[..., I]") -> None:
    """Raises ValueError unless `x` is floating, of `dtype`, rank >= min_rank, last axis `input_size`."""
    shape = tuple(np.shape(x))
    if len(shape) < min_rank:
        raise ValueError(f"{what}: expected rank >= {min_rank} with layout {layout}, "
                         f"got shape {shape}")
    if shape[-1] != input_size:
        raise ValueError(f"{what}: expected last axis of size I={input_size} ({layout}), "
                         f"got shape {shape}")
    x_dtype = jnp.result_type(x)
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise ValueError(f"{what}: expected a floating dtype ({jnp.dtype(dtype).name}, the params' "
                         f"dtype), got {x_dtype.name} with shape {shape}")
    if x_dtype != jnp.dtype(dtype):
        raise ValueError(f"{what}: expected dtype {jnp.dtype(dtype).name} (the params' dtype), "
                         f"got {x_dtype.name} with shape {shape}")


def check_carry(carry, expected, *, what: str = "carry") -> None:
    """Raises ValueError unless `carry` has the structure, shapes and dtypes of `expected`.

    The dtype is checked too: a carry of another dtype than the params' either fails deep
    inside `lax.scan` (bfloat16 carry, float32 params) or silently promotes the whole run
    (float32 carry, bfloat16 params).
    """
    got = jax.tree_util.tree_structure(carry)
    want = jax.tree_util.tree_structure(expected)
    if got != want:
        raise ValueError(f"{what}: expected a pytree like {want}, got {got}")
    for name, a, b in zip(getattr(expected, "_fields", range(len(expected))),
                          jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(expected)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{what}.{name}: expected shape {np.shape(b)}, got {np.shape(a)}")
        if jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(f"{what}.{name}: expected dtype {jnp.result_type(b).name} (the "
                             f"params' dtype), got {jnp.result_type(a).name}; cast the carry")


def check_step(x, carry, *, what: str = "step") -> None:
    """Raises ValueError unless x `[..., I]` has the batch axes of carry.h `[..., H]`: an
    unbatched x would otherwise broadcast against a batched carry without a word."""
    x_batch, c_batch = tuple(np.shape(x))[:-1], tuple(np.shape(carry.h))[:-1]
    if x_batch != c_batch:
        raise ValueError(f"{what}: x [..., I] and carry.h [..., H] must have the same batch "
                         f"axes; got x {tuple(np.shape(x))}, carry.h {tuple(np.shape(carry.h))}")


def check_float_dtype(value: Any, what: str, *, optional: bool = False):
    """`value` as a floating `jnp.dtype` (or None, if `optional`); raises ValueError otherwise."""
    if optional and value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{what}: expected a floating dtype (float32, bfloat16, float16, "
                         f"float64), got {repr(value) if dtype is None else dtype.name}")
    return dtype


def check_rate(value: Any, what: str) -> float:
    """`value` as a float in [0, 1); raises ValueError (naming `what`) otherwise."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number))
            or not 0.0 <= float(value) < 1.0):
        raise ValueError(f"{what}: expected a rate in [0, 1), got {value!r}")
    return float(value)


def check_int(value: Any, what: str, *, minimum: int = 1, optional: bool = False) -> None:
    """Raises ValueError unless `value` is an integer >= minimum (or None, if `optional`)."""
    if optional and value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what}: expected {'None or ' if optional else ''}an integer "
                         f">= {minimum}, got {value!r}")


def enum_value(kind: type[enum.Enum], value: Any, what: str) -> enum.Enum:
    """The member of `kind` that `value` (a member, of any enum, or its value) names; raises
    ValueError listing the valid values otherwise."""
    try:
        return kind(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        raise ValueError(f"{what}: unknown value {value!r}; valid: "
                         f"{[v.value for v in kind]}") from None


def lift(b: jax.Array, ndim: int) -> jax.Array:
    """A bias `[N]` as `[1, ..., 1, N]` of rank `ndim`: explicit broadcasting, so the library
    runs under `jax_numpy_rank_promotion="raise"` (which the tests enable)."""
    return jnp.reshape(b, (1,) * (ndim - 1) + b.shape)
