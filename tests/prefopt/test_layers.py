"""The floors of the house: no import runs back up, and the core never names a plugin.

Read from the source with `ast` (imports inside functions included), not by importing:
an upward import is a design error even where it happens not to form a cycle today.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"prefopt": ROOT / "prefopt", "prefopt.kernels": ROOT / "kernels",
           "prefopt.plugins": ROOT / "plugins"}

# Bottom up. A module may import its own floor and those below, never one above.
FLOORS = [
    # the contract, and the math plugins call
    ("prefopt", "prefopt._compat", "prefopt.objective", "prefopt.registry", "prefopt.rl"),
    # the built-in objectives: the contract only (and each other)
    ("prefopt.plugins",),
    # data, models, log-probs
    ("prefopt.data", "prefopt.tiny", "prefopt.models", "prefopt.kernels", "prefopt.logprobs",
     "prefopt.reference_cache", "prefopt.reference_memo"),
    # scorers of trained models; the shared training machinery and the offline module
    ("prefopt.steer", "prefopt.training.metrics", "prefopt.training.optim",
     "prefopt.training.policy", "prefopt.training.module"),
    # the online module, beside the offline one and composing the same machinery
    ("prefopt.online",),
    # runs and tools on top; the Python API beside prefopt-train, which calls it
    ("prefopt.training", "prefopt.generate", "prefopt.evaluate", "prefopt.testing",
     "prefopt.api"),
    # experiments over many runs, through the API
    ("prefopt.compare",),
]


def _floor(module: str) -> int:
    """The floor of the longest prefix of `module` named in FLOORS."""
    best, floor = -1, None
    for level, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, floor = len(name), level
    assert floor is not None, f"{module} is on no floor: add it to FLOORS"
    return floor


def _modules():
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


MODULES = dict(_modules())


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from prefopt.training import optim` imports the module prefopt.training.optim
            # (the package's __init__ is lazy); `from prefopt.objective import Needs`
            # imports prefopt.objective.
            for alias in node.names:
                name = f"{target}.{alias.name}"
                found.add(name if name in MODULES else target)
    return {name for name in found if name == "prefopt" or name.startswith("prefopt.")}


def _known(name: str) -> bool:
    """Whether `name` is a module of the source tree."""
    return name in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_back_up(module):
    floor = _floor(module)
    upward = sorted(name for name in _imports(module, MODULES[module])
                    if _known(name) and _floor(name) > floor
                    and not module.startswith(name + "."))  # a package's own __init__
    assert not upward, f"{module} (floor {floor}) imports from above: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if not m.startswith("prefopt.plugins")))
def test_the_core_never_imports_a_plugin(module):
    plugins = sorted(name for name in _imports(module, MODULES[module])
                     if name.startswith("prefopt.plugins"))
    assert not plugins, f"{module} imports {plugins}; load objectives through the registry"


def test_the_floor_table_names_real_modules():
    for names in FLOORS:
        for name in names:
            assert name in MODULES, name


def test_an_upward_import_is_caught(tmp_path):
    """The check itself: a data module that imports the training module is flagged."""
    path = tmp_path / "bad.py"
    path.write_text("from prefopt.training.module import PreferenceModule\n")
    imported = _imports("prefopt.data.bad", path)
    assert "prefopt.training.module" in imported
    assert _floor("prefopt.training.module") > _floor("prefopt.data.bad")
