"""The package's layers: each folder imports only the folders below it (lazy imports count).

Read from the source with ``ast`` (nothing is imported), so a new upward import fails here
before it can hide behind a function-level import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmgmm_spark"

LAYERS = {"core": 0, "io": 1, "models": 2, "storage": 2, "spark": 3, "tracking": 4, "ml": 4,
          "sklearn": 4, "app": 5}
"""Layer of each sub-package; a module may import its own layer's siblings and lower layers."""

ISOLATED = {("models", "storage"), ("storage", "models"), ("tracking", "ml")}
"""(source, target) pairs of one layer where source must not import target either (``ml``
converts to and from the MLflow model, so it imports ``tracking``, never the reverse)."""


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("mmgmm_spark.")}


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_subpackage_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS), f"folders without a layer: {folders ^ set(LAYERS)}"


def test_layers_import_only_layers_below():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        source = _folder("mmgmm_spark." + path.relative_to(PACKAGE).with_suffix("").as_posix()
                         .replace("/", "."))
        if source is None:
            continue
        for target in map(_folder, _imports(path)):
            if target is None or target == source:
                continue
            if LAYERS[target] > LAYERS[source] or (source, target) in ISOLATED:
                upward.append(f"{path.relative_to(PACKAGE)} ({source}) imports {target}")
    assert not upward, "\n".join(sorted(set(upward)))


def test_jobs_and_notebooks_call_the_application_only():
    callers = [*PACKAGE.parent.joinpath("jobs").glob("*.py"),
               *PACKAGE.parent.joinpath("notebooks").glob("*.py")]
    assert callers
    wrong = [f"{path.name} imports {name}" for path in callers for name in _imports(path)
             if _folder(name) not in ("app", None)]
    assert not wrong, "\n".join(wrong)


def test_sklearn_faces_import_only_models_and_core():
    """The scikit-learn estimators use no Spark, MLflow or storage code of their own."""
    used = {_folder(name) for path in (PACKAGE / "sklearn").rglob("*.py")
            for name in _imports(path)} - {None, "sklearn"}
    assert used <= {"core", "models"}, used
