"""The trainers' shared code is split by concern (train/distributed.py, deepspeed_config.py,
seeding.py, optimizer.py, lr_schedule.py, checkpoints.py, run_setup.py): no module of the project
imports a private name of a ``train`` module, and the ``train`` modules import each other without
a cycle. Read from the source (``ast``), nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("train", "models", "data_engine", "benchmarks", "scripts")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_module(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module name of a ``from X import ...`` (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if ".venv" not in p.parts)


def test_no_private_name_of_a_train_module_is_imported_elsewhere():
    found = []
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _imported_module(node, path)
            if source != "train" and not source.startswith("train."):
                continue
            if source == _module_name(path):
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {source}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def _train_graph() -> dict[str, set[str]]:
    """train module -> the train modules it imports at module level (imports inside functions
    are deferred on purpose and cannot form a cycle at import time)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in _sources("train")}
    for path in _sources("train"):
        deps = set()
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ImportFrom):
                source = _imported_module(node, path)
                names = [source] + [f"{source}.{a.name}" for a in node.names]
                deps |= {n for n in names if n in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[_module_name(path)] = deps - {_module_name(path)}
    return graph


def test_train_modules_import_each_other_without_a_cycle():
    graph = _train_graph()
    assert "train.distributed" in graph and "train.checkpoints" in graph  # the scan sees the split modules
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            if not (node.startswith(dep + ".") or dep == "train"):  # a package's own __init__
                visit(dep, stack + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_shared_trainer_modules_hold_one_concern_each():
    """The former common module of train/ (603 lines, five concerns) is gone; its parts stay small."""
    assert not (ROOT / "train" / "common.py").exists()
    for name in ("distributed", "deepspeed_config", "seeding", "optimizer", "lr_schedule", "checkpoints",
                 "run_setup"):
        lines = len((ROOT / "train" / f"{name}.py").read_text().splitlines())
        assert lines <= 250, (name, lines)
