"""The layout shows the architecture, and stays that way: no import cycles between modules, the
public names and the old module paths import, plotting never changes matplotlib's backend."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import minivae
from minivae import _compat

PACKAGE = Path(minivae.__file__).resolve().parent


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, modules):
    """The minivae modules that ``path`` imports, at the top or inside a function (a lazy import
    that closes a circle is still a circle: the two modules cannot be understood apart)."""
    tree = ast.parse(path.read_text())
    hints_only = set()      # ``if TYPE_CHECKING:`` imports exist for type hints, never at run time
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hints_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def test_no_import_cycles():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(path, paths) - {name} for name, path in paths.items()}
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join(trail + [name])
        state[name] = "open"
        for child in sorted(graph[name]):
            visit(child, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_the_subpackages():
    for name in ["ops", "backend", "fast", "training", "training.data", "study", "plots"]:
        assert (PACKAGE / name.replace(".", "/") / "__init__.py").exists(), name
    assert len(list(PACKAGE.glob("*.py"))) <= 10   # the top level holds the model and its companions only


def test_every_public_name_resolves():
    for name in minivae.__all__:
        assert getattr(minivae, name) is not None, name


@pytest.mark.parametrize("old", sorted(_compat.OLD_PATHS))
def test_the_old_module_paths_still_import(old):
    module = importlib.import_module(f"minivae.{old}")
    for new in _compat.OLD_PATHS[old]:
        public = [n for n in vars(importlib.import_module(new)) if not n.startswith("_")]
        assert all(hasattr(module, n) for n in public), (old, new)


def test_old_paths_give_the_same_objects():
    from minivae.fast.array_kernels import ArrayKernels as new_kernels
    from minivae.fast.sources import CUDA_KERNELS as new_sources
    from minivae.kernels import CUDA_KERNELS, ArrayKernels
    from minivae.layers import relu_forward
    from minivae.ops.layers import relu_forward as new_relu
    from minivae.train import TrainConfig
    assert relu_forward is new_relu and ArrayKernels is new_kernels and CUDA_KERNELS is new_sources
    assert TrainConfig is minivae.TrainConfig and minivae.train.__name__ == "train"


def test_plotting_leaves_matplotlib_alone():
    """``import minivae`` imports no matplotlib, and no module calls ``matplotlib.use``: it would
    switch the backend of a notebook that imports minivae."""
    for path in PACKAGE.rglob("*.py"):
        assert "matplotlib.use(" not in path.read_text(), path
    code = "import sys, minivae; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
