"""Executes every ```python block of README.md, in order, in one namespace (the docs can't rot).

Blocks that import torch are skipped when torch is not installed (it is an optional extra).
"""

import importlib.util
import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python blocks"
    has_torch = importlib.util.find_spec("torch") is not None
    namespace: dict = {}
    with jax.numpy_rank_promotion("allow"):  # user code may broadcast freely
        for i, block in enumerate(blocks):
            if "import torch" in block and not has_torch:
                continue
            try:
                exec(compile(block, f"README.md python block {i}", "exec"), namespace)
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"README python block {i} failed:\n{block}") from e
