"""The layering rules, checked on the source: no import cycles, library modules never import a command
module, each package of kseg imports only packages below it (``LAYERS``), the TFDS builder never imports kseg,
and the shared readers (``segio``) import neither."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("kseg", "tfds_ph2", "segio")
COMMANDS = {f"kseg.{name}" for name in ("train", "evaluate", "predict", "export", "client", "show", "fetch")}
#: kseg's packages from the bottom up; a module may import its own package and those on lower layers only.
#: The data flow: files -> data -> models + tasks -> prediction -> evaluation -> training -> serving -> commands.
LAYERS = (
    ("kseg.core",),
    ("kseg.data", "kseg.models"),
    ("kseg.tasks",),
    ("kseg.prediction",),
    ("kseg.evaluation",),
    ("kseg.training",),
    ("kseg.serving",),
)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def _imports(path: pathlib.Path, modules) -> set[str]:
    """Project modules that ``path`` imports, at any level (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
            elif name.rsplit(".", 1)[0] in modules and isinstance(node, ast.ImportFrom):
                found.add(name.rsplit(".", 1)[0])  # ``from kseg.data import load``: the module kseg.data
    found.discard(_module_name(path))
    return found


GRAPH = {name: _imports(path, _modules()) for name, path in _modules().items()}


def _cycle() -> list[str] | None:
    """One import cycle (as a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH.get(node, ())):
            # A package's __init__ importing its own submodules is how packages expose them, not a cycle.
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_sees_imports():
    assert "kseg.training.setup" in GRAPH["kseg.training.fit_loop"]
    assert "kseg.training" in GRAPH["kseg.train"]  # a function-level import
    assert "segio.images" in GRAPH["tfds_ph2.ph2_source"]


def test_no_import_cycles():
    assert _cycle() is None, " -> ".join(_cycle())


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name not in COMMANDS))
def test_library_modules_do_not_import_commands(module):
    assert not GRAPH[module] & COMMANDS, f"{module} imports the command module(s) {sorted(GRAPH[module] & COMMANDS)}"


def _layer(module: str) -> int | None:
    for rank, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return rank
    return None


def test_every_kseg_module_is_in_a_package_or_a_command():
    loose = [m for m in GRAPH if m.startswith("kseg.") and m not in COMMANDS and _layer(m) is None]
    assert not loose, f"modules outside kseg's packages (add them to one, or to LAYERS): {loose}"


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if _layer(name) is not None))
def test_packages_import_only_lower_layers(module):
    upward = sorted(t for t in GRAPH[module] if _layer(t) is not None and _layer(t) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


def test_an_upward_import_would_be_found(monkeypatch):
    monkeypatch.setitem(GRAPH, "kseg.data.augment", GRAPH["kseg.data.augment"] | {"kseg.training.setup"})
    with pytest.raises(AssertionError, match="imports higher layers"):
        test_packages_import_only_lower_layers("kseg.data.augment")


def test_builder_and_shared_readers_do_not_import_kseg():
    for name, targets in GRAPH.items():
        if name.startswith("tfds_ph2"):
            assert not {t for t in targets if t.startswith("kseg")}, f"{name} imports {targets}"
        if name.startswith("segio"):
            assert not {t for t in targets if t.startswith(("kseg", "tfds_ph2"))}, f"{name} imports {targets}"


def test_a_cycle_would_be_found(monkeypatch):
    # kseg.evaluation.cases imports kseg.prediction.inference; the reverse edge closes a loop.
    monkeypatch.setitem(
        GRAPH, "kseg.prediction.inference", GRAPH["kseg.prediction.inference"] | {"kseg.evaluation.cases"}
    )
    assert _cycle() is not None
