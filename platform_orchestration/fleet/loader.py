"""Load the fleet file: YAML -> ``${VAR}`` interpolation -> validated :class:`Fleet`.

Every problem becomes one line ``FILE:LINE: FIELD.PATH: what was expected``, and all problems in a
file are reported together through a single :class:`FleetError` (never a traceback). Reading, line
numbers and plain-English validation errors are shared with the job and schedule specs
(:mod:`platform_orchestration.declarations`); this module adds what is particular to the fleet:
its reference checks, the ``source`` field and where the fleet file is found.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from platform_orchestration.declarations import (
    DeclarationError,
    read_yaml_mapping,
    render_findings,
)
from platform_orchestration.fleet.model import (
    Fleet,
    FleetValidationContext,
    find_reference_problems,
)

__all__ = ["FLEET_PATH_ENV", "FleetError", "fleet_path_from_env", "load_fleet"]

FLEET_PATH_ENV = "PLATFORM_FLEET"
_DEMO_FLEET = Path("deploy") / "fleet" / "demo.yaml"
_EXPECTED = "a mapping with clusters, stores, databases and policies"


class FleetError(DeclarationError):
    """The fleet file cannot be used. ``errors`` holds one ``FILE:LINE: PATH: message`` per problem."""


def fleet_path_from_env() -> Path:
    """The fleet file to use: ``$PLATFORM_FLEET`` if set, else the repository's demo fleet.

    The demo fleet is ``deploy/fleet/demo.yaml`` under the repository root (the parent of the
    ``platform_orchestration`` package) when that file exists, else under the current directory.
    """
    configured = os.environ.get(FLEET_PATH_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    repository_root = Path(__file__).resolve().parents[2]
    in_repository = repository_root / _DEMO_FLEET
    return in_repository if in_repository.is_file() else Path.cwd() / _DEMO_FLEET


def load_fleet(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Fleet:
    """Read, interpolate and validate the fleet file at ``path``.

    ``environ`` (default: ``os.environ``) supplies ``${VAR}`` values. Relative paths in the file are
    resolved against its directory. Raises :class:`FleetError` listing every problem found.
    """
    try:
        document = read_yaml_mapping(
            path,
            what="fleet file",
            expected=_EXPECTED,
            environ=environ if environ is not None else os.environ,
        )
    except DeclarationError as exc:
        raise FleetError(exc.errors) from None

    absolute_file = Path(document.source).absolute()
    # References are checked below instead, so that their messages carry line numbers.
    context = FleetValidationContext(fleet_dir=absolute_file.parent, check_references=False)
    fleet = document.validate(Fleet, context=context, supplied={"source": absolute_file})

    for problem in find_reference_problems(document.data):
        message = problem.message
        if problem.earlier is not None:
            message += f" ({problem.earlier_label} at line {document.line_of(problem.earlier)})"
        document.report(problem.loc, message)

    if document.findings or fleet is None:
        raise FleetError(render_findings(document.findings))
    return fleet
