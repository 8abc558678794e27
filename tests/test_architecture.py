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
    "replication": {"errors", "clock", "fleet", "postgres", "storage", "backups", "physical", "ownership"},
    "stores": {"errors", "fleet", "storage", "secrets"},
    "providers": {"errors", "secrets", "crypto"},
    "observability": {"errors", "clock", "fleet", "storage", "backups"},
    "reporting": {"errors", "clock", "fleet", "storage", "backups", "observability"},
    "protection": {"errors", "clock", "fleet", "postgres", "storage", "secrets", "crypto", "backups", "stores",
                   "providers", "physical", "replication", "ownership", "observability", "reporting"},
    # what each step's pod needs, from the fleet: plain values the Dagster layer turns into op tags
    "kube": {"errors", "fleet"},
    "rollout": {"errors", "declarations", "fleet", "kube"},
}
CORE = set(ALLOWED)

# Imports deliberately made on first use, each for start-up time or an optional backend, never
# to break a cycle: (module, imported module).
LAZY_IMPORTS_ALLOWED = {
    ("stores", "platform_orchestration.storage.s3"),
    ("stores", "platform_orchestration.storage.azure"),
    ("stores", "platform_orchestration.storage.gcs"),
    ("providers", "platform_orchestration.secrets.vault"),
    ("providers", "platform_orchestration.crypto.vault_transit"),
    ("providers", "platform_orchestration.crypto.local_keys"),
    ("secrets", "platform_orchestration.secrets"),  # the PEP 562 __getattr__ for the Vault names
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


@pytest.mark.parametrize("path", [p for p in MODULES if _part_of(p) in CORE], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_is_deferred_into_a_function_to_hide_a_cycle(path: Path) -> None:
    part = _part_of(path)
    for module, in_function in _imports(ast.parse(path.read_text())):
        if in_function and module.startswith("platform_orchestration"):
            assert (part, module) in LAZY_IMPORTS_ALLOWED, (
                f"{path.relative_to(PACKAGE)} imports {module} inside a function")
