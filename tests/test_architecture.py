"""The seams of the package, checked on its source: dependencies point one way, the core
knows nothing of Dagster, and no import is tucked into a function to hide a cycle.

Layers, lowest first (a module may import its own package and the packages listed for it):

    errors, clock
    ownership                           (who owns a local process's leftovers; the reaper)
    declarations, fleet
    postgres, storage, secrets          (each alone: none imports another)
    kube                                (what each step's pod needs, from the fleet: plain values)
    crypto                              (ciphers and key services; Vault's client from secrets)
    backups                             (manifests, taking, copying, restoring, drilling)
    physical                            (barman-cloud base backups, WAL archiving, PITR; beside backups)
    replication                         (standby clusters: seeds, lag, failover drills, promotion)
    stores.py, providers.py             (fleet entries -> open stores; environment -> providers)
    observability, reporting            (recoverability per store, remedies, metrics, alerts; the report)
    protection.py                       (FleetProtection: the one API of the core)
    cli.py and the Dagster layer        (call the core and format)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform_orchestration"

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "clock": set(),
    "ownership": {"errors"},
    "declarations": {"errors"},
    "fleet": {"errors", "declarations"},
    "postgres": {"errors", "fleet", "ownership"},
    # fleet.durations formats retention periods in messages; no fleet *spec* reaches a backend.
    "storage": {"errors", "fleet", "ownership"},
    "secrets": {"errors", "fleet"},
    "crypto": {"errors", "secrets"},
    "backups": {"errors", "clock", "fleet", "postgres", "storage", "crypto", "ownership", "__init__"},
    # Physical backups (barman-cloud): above backups (drill ids, evidence writing), below protection; takes plain values and open stores.
    "physical": {"errors", "clock", "fleet", "postgres", "storage", "backups", "ownership"},
    # Standby clusters: above physical (repository seeds, archive fallback), below protection.
    # kube: a seed refuses a directory deleted with its step pod (kube.pod_storage).
    "replication": {"errors", "clock", "fleet", "postgres", "storage", "backups", "physical", "ownership", "kube"},
    "stores": {"errors", "fleet", "storage", "secrets"},
    "providers": {"errors", "secrets", "crypto"},
    "observability": {"errors", "clock", "fleet", "storage", "backups"},
    "reporting": {"errors", "clock", "fleet", "storage", "backups", "observability"},
    "protection": {"errors", "clock", "fleet", "postgres", "storage", "secrets", "crypto", "backups", "stores",
                   "providers", "physical", "replication", "ownership", "observability", "reporting", "kube"},
    # what each step's pod needs, from the fleet: plain values the Dagster layer turns into op tags
    "kube": {"errors", "fleet"},
    "rollout": {"errors", "declarations", "fleet", "kube"},
}
CORE = set(ALLOWED)

# The modules that import some of the package inside functions, on first use: the entry points
# (FleetProtection and its replication part import each capability in the methods that use it, so
# that a command pays only for what it runs: tests/test_startup.py proves what each command keeps
# out), and the openers of optional backends (a cloud SDK or Vault's client only when one is used).
DEFERRING_MODULES = {
    "protection.py",
    "replication/protection.py",
    "stores.py",
    "providers.py",
    "secrets/__init__.py",  # the PEP 562 __getattr__ for the Vault names
}


def _part_of(path: Path) -> str:
    """The layer name of a module: its top-level package, or its own name at the top."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported module, made inside a function) for every import of the module."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, in_function))
            elif isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue  # annotations only: no run-time dependency
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", [p for p in MODULES if _part_of(p) in CORE], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_modules_import_only_lower_layers_and_never_dagster(path: Path) -> None:
    part = _part_of(path)
    for module, _ in _imports(ast.parse(path.read_text())):
        assert not module.startswith("dagster"), f"{path.name}: the core must not import {module}"
        if not module.startswith("platform_orchestration"):
            continue
        target = module.split(".")[1] if module.count(".") else "__init__"
        assert target == part or target in ALLOWED[part], (
            f"{path.relative_to(PACKAGE)} ({part}) imports {module} ({target}): not a lower layer")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


KNOWN = {_module_name(p) for p in MODULES}


def _imported_modules(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package's modules an import statement loads: the named ones, their parent packages
    (importing a.b.c runs a and a.b first), and each `from a.b import c` whose c is a module."""
    named = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
             else [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names])
    loaded = set()
    for name in named:
        parts = name.split(".")
        loaded |= {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    return loaded & KNOWN


def _top_level_imports() -> dict[str, set[str]]:
    """Module -> the package's modules it loads when it is imported (function bodies and
    TYPE_CHECKING blocks excluded: they run later, or never)."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        edges: set[str] = set()

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    continue
                if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)) and getattr(child, "level", 0) == 0:
                    edges.update(_imported_modules(child))
                visit(child)

        visit(ast.parse(path.read_text()))
        graph[_module_name(path)] = edges
    return graph


TOP_LEVEL = _top_level_imports()


def _loaded_with(module: str) -> set[str]:
    """Every package module that importing `module` loads, itself included."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(TOP_LEVEL.get(name, ()))
    return seen


def _deferred_imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(package module, line) for every import of the package made inside a function."""
    found = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "level", 0) == 0:
                    found += [(name, node.lineno) for name in _imported_modules(node)]
    return found


@pytest.mark.parametrize("path", [p for p in MODULES if _part_of(p) in CORE], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_deferred_into_functions_are_entry_points_and_hide_no_cycle(path: Path) -> None:
    """An import made on first use is a start-up choice of an entry point, never a way around a
    cycle: the module it names does not load, directly or through others, the module deferring it."""
    relative = str(path.relative_to(PACKAGE))
    own = _module_name(path)
    for module, line in _deferred_imports(ast.parse(path.read_text())):
        if module == "platform_orchestration" or module == own:
            continue
        assert relative in DEFERRING_MODULES, (
            f"{relative}:{line} imports {module} inside a function, and is not an entry point")
        if module.startswith(f"{own}."):
            continue  # a package's own submodule on first use (PEP 562): it loads its package, which is loaded
        assert own not in _loaded_with(module), (
            f"{relative}:{line} defers importing {module}, which loads {own} itself: a cycle")


def test_the_cycle_check_sees_a_cycle() -> None:
    # protection loads the stores' opener; the opener does not load protection (no cycle), and a
    # module that loads protection (cli does not at the top; the Dagster resources do) would be one.
    assert "platform_orchestration.stores" in _loaded_with("platform_orchestration.protection")
    assert "platform_orchestration.protection" not in _loaded_with("platform_orchestration.stores")
    assert "platform_orchestration.protection" in _loaded_with("platform_orchestration.resources")
