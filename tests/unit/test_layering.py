"""The layering rules, checked over every module of every layer (found by walking the folders, never listed by hand).

Layers, imports pointing down only:

    genpi/       (CLI, service, Python API)   -> flows, genpi_core, schemas
    flows/       (Prefect @flow modules only) -> tasks, schemas
    tasks/       (thin Prefect @task wrappers) -> genpi_core, schemas
    genpi_core/  (heavy compute, no Prefect)  -> schemas
    schemas/     (nothing of ours)

A module's own package is always allowed. genpi_core and schemas must stay usable without Prefect
(scripts, notebooks, accelerate launch): importing any of their modules never loads ``prefect``.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("genpi", "flows", "tasks", "genpi_core", "schemas")
ALLOWED: dict[str, set[str]] = {
    "genpi": {"flows", "genpi_core", "schemas"},
    "flows": {"tasks", "schemas"},
    "tasks": {"genpi_core", "schemas"},
    "genpi_core": {"schemas"},
    "schemas": set(),
}
# Needs the optional vLLM install (.venv-vllm); importing it without vLLM fails for reasons unrelated to layering.
NEEDS_VLLM = {"genpi_core.generation.vllm_backend"}


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` (dotted name -> file), by a file walk: works for namespace packages too."""
    base = ROOT / package
    found = {}
    for path in sorted(base.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted target) for every import statement anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                if node.module is None:  # `from . import x`: each name is a module of the anchor package
                    targets += [(node.lineno, ".".join(anchor + [alias.name])) for alias in node.names]
                    continue
                name = ".".join(anchor + [node.module])
            else:
                name = node.module
            targets.append((node.lineno, name))
    return targets


def test_layers_import_only_the_layers_below():
    violations = []
    for layer, allowed in ALLOWED.items():
        modules = _modules(layer)
        assert modules, f"no modules found under {layer}/"
        for module, path in modules.items():
            for line, target in _imported(module, path):
                top = target.split(".")[0]
                if top in FIRST_PARTY and top != layer and top not in allowed:
                    violations.append(
                        f"{path.relative_to(ROOT)}:{line}: {layer} imports {target} "
                        f"(allowed: {', '.join(sorted(allowed | {layer}))})"
                    )
    assert not violations, "layering violations:\n" + "\n".join(violations)


def _importable(package: str) -> list[str]:
    vllm = importlib.util.find_spec("vllm") is not None
    return [m for m in _modules(package) if vllm or m not in NEEDS_VLLM]


def _import_all_then(modules: list[str], check: str) -> subprocess.CompletedProcess:
    """Import ``modules`` in a fresh interpreter, then run ``check`` (which sets ``bad``) and fail on anything in it."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"{check}\n"
        "assert not bad, bad\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("package", ["genpi_core", "schemas"])
def test_core_and_schemas_never_import_prefect(package):
    modules = _importable(package)
    assert len(modules) > 3, modules  # the walk found the package's modules
    proc = _import_all_then(modules, "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')")
    assert proc.returncode == 0, f"importing {package} loaded prefect (or failed):\n{proc.stderr[-4000:]}"


def test_schemas_import_nothing_of_ours():
    modules = _importable("schemas")
    others = tuple(p for p in FIRST_PARTY if p != "schemas")
    proc = _import_all_then(modules, f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {others!r})")
    assert proc.returncode == 0, (
        f"importing schemas loaded other first-party packages (or failed):\n{proc.stderr[-4000:]}"
    )


def _decorator_name(node: ast.expr) -> str:
    """``flow`` for @flow, @flow(...), @prefect.flow and @prefect.flow(...)."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def test_flow_modules_define_only_flows():
    problems = []
    for module, path in _modules("flows").items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def where(node: ast.AST) -> str:
            return f"{path.relative_to(ROOT)}:{node.lineno}"

        for node in tree.body:  # module level: public functions are flows; `_private` helpers may be plain
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                names = [_decorator_name(d) for d in node.decorator_list]
                if "flow" not in names:
                    problems.append(f"{where(node)}: public function {node.name} is not a @flow")
        for node in ast.walk(tree):  # anywhere: tasks live in tasks/
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if "task" in [_decorator_name(d) for d in node.decorator_list]:
                    problems.append(f"{where(node)}: {node.name} is a @task; tasks belong in tasks/")
            elif isinstance(node, ast.ImportFrom) and node.module == "prefect":
                if any(alias.name == "task" for alias in node.names):
                    problems.append(f"{where(node)}: imports prefect.task; tasks belong in tasks/")
    assert not problems, "flows/ defines more than flows:\n" + "\n".join(problems)
