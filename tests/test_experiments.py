"""Pins the map in experiments/__init__.py: it names every module and package of experiments/,
and the leaves (checkpoint, parallel, outputs) import nothing from experiments but `files`."""

import ast
import os

import experiments

ROOT = os.path.dirname(os.path.abspath(experiments.__file__))
LEAVES = ("checkpoint", "parallel", "outputs", "checks", "files")


def _modules():
    names = [n[:-3] for n in os.listdir(ROOT) if n.endswith(".py") and n != "__init__.py"]
    packages = [n for n in os.listdir(ROOT)
                if os.path.isfile(os.path.join(ROOT, n, "__init__.py"))]
    return sorted(names + packages)


def test_every_module_is_in_the_map():
    listed = {line.split()[0] for line in experiments.__doc__.splitlines()
              if line.startswith("  ") and line.split()}
    missing = [m for m in _modules() if m not in listed]
    assert not missing, f"add {missing} to the module map in experiments/__init__.py"


def test_leaves_import_nothing_from_experiments():
    for leaf in LEAVES:
        with open(os.path.join(ROOT, f"{leaf}.py")) as f:
            tree = ast.parse(f.read())
        imported = [n.module + "." + a.name if isinstance(n, ast.ImportFrom) else a.name
                    for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in n.names]
        inside = [m for m in imported if m.startswith("experiments")]
        assert inside in ([], ["experiments.files"]), f"{leaf} imports {inside}"
