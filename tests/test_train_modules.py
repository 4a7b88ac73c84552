"""The trainers' shared code is split by concern (train/distributed.py, deepspeed_config.py,
seeding.py, optimizer.py, lr_schedule.py, checkpoints.py, run_setup.py): no module of the project
imports a private name of a ``train`` module, and the ``train`` modules import each other without
a cycle (read from the source with ``ast``, nothing imported). A run makes its config a typed
``Config`` once and hands that down (the last tests count it, on a one-step tiny run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


# --------------------------------------------------------------------------- the config, once per run

TINY_RUN = ["data.seq_len=160", "data.num_workers=0", "logging=disabled", "train.steps=1",
            "train.save_every=0", "train.resume=null", "train.reliance.every=0",
            "train.micro_batch_size=1", "train.global_batch_size=1",
            "data.mode_weights={tiny: 1.0, small: 0.0, base: 0.0, large: 0.0, gundam: 0.0, gundam_m: 0.0}"]


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    from test_stage1 import train_tiny_tokenizer, write_tiny_shards

    root = tmp_path_factory.mktemp("config_once")
    shards, texts = write_tiny_shards(root / "shards", n=4)
    return [f"model.tokenizer={train_tiny_tokenizer(root / 'tok', texts)}", f"data.shards=[{shards}]"]


_COUNTERS: list = []  # the counters of earlier tests (a module imported during one keeps it bound)


@pytest.fixture()
def config_work(monkeypatch):
    """Counts, from here on, what is done to the whole config: ``converted`` (a DictConfig or
    dict made into the typed ``Config``: OmegaConf.to_object) and ``checked`` (``typed(x, Config)``
    calls: a conversion, or a re-check of a ``Config`` some caller already had)."""
    import sys

    from omegaconf import OmegaConf

    import data_engine.config
    from train.config import Config

    counts = {"converted": 0, "checked": 0}
    to_object, typed = OmegaConf.to_object, data_engine.config.typed

    def counting_to_object(node):
        out = to_object(node)
        counts["converted"] += isinstance(out, Config)
        return out

    def counting_typed(cfg, schema):
        counts["checked"] += schema is Config
        return typed(cfg, schema)

    monkeypatch.setattr(OmegaConf, "to_object", counting_to_object)
    for module in list(sys.modules.values()):  # every module that imported the converter by name,
        bound = getattr(module, "typed", None)  # also while an earlier test's counter was in place
        if bound is typed or any(bound is c for c in _COUNTERS):
            monkeypatch.setattr(module, "typed", counting_typed)
    _COUNTERS.append(counting_typed)
    return counts


@pytest.mark.parametrize("recipe,stage_args", [("smoke", []), ("smoke_stage2", ["train.pp=1", "model.encoder_from=null"])],
                         ids=["stage1", "stage2"])
def test_a_run_converts_its_config_once_and_passes_it_down(tmp_path, tiny_inputs, config_work, recipe, stage_args):
    """compose -> train -> the stage's trainer (process group, model, DeepSpeed config, logger,
    one step, export): the config is made a typed ``Config`` once, at composition, and every
    part below is handed that ``Config`` (a stage-2 run used to check it 8 times and convert it
    twice)."""
    from train.api import compose, train

    cfg = compose(recipe, [*tiny_inputs, *TINY_RUN, *stage_args, f"train.out_dir={tmp_path / 'run'}"])
    result = train(cfg)
    assert result["stage"] == cfg.train.stage and result["steps"] == 1
    assert config_work == {"converted": 1, "checked": 1}, config_work


def test_the_launch_config_check_converts_once(tmp_path, tiny_inputs, config_work, capsys):
    """launch.sh's one config check (train.preflight): compose, the input checks, the process
    layout, from one conversion."""
    from train.preflight import main

    main(["smoke_stage2", *tiny_inputs, "model.encoder_from=null", f"train.out_dir={tmp_path / 'run'}"])
    assert capsys.readouterr().out.split() == ["2", "2", "gloo", "2", str(tmp_path / "run")]
    assert config_work == {"converted": 1, "checked": 1}, config_work
