"""Load the fleet file: YAML -> ``${VAR}`` interpolation -> validated :class:`Fleet`.

Every problem becomes one line ``FILE:LINE: FIELD.PATH: what was expected``, and all problems in a
file are reported together through a single :class:`FleetError` (never a traceback).
Line numbers come from the composed YAML node tree, keyed by the same field paths pydantic uses.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from platform_orchestration.fleet.model import (
    Fleet,
    FleetValidationContext,
    Loc,
    find_reference_problems,
    format_field_path,
)

__all__ = ["FLEET_PATH_ENV", "FleetError", "fleet_path_from_env", "load_fleet"]

FLEET_PATH_ENV = "PLATFORM_FLEET"
_DEMO_FLEET = Path("deploy") / "fleet" / "demo.yaml"
_STR_TAG = "tag:yaml.org,2002:str"
# "$${" is a literal "${"; an unclosed "${" is caught by the last alternative.
_INTERPOLATION = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_INTERPOLATION_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


class FleetError(ValueError):
    """The fleet file cannot be used. ``errors`` holds one ``FILE:LINE: PATH: message`` per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


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
    display_name = os.fspath(path)
    fleet_file = Path(display_name)
    text = _read_text(fleet_file, display_name)
    root = _compose(text, display_name)
    if root is None:
        raise FleetError(
            [f"{display_name}: the fleet file is empty; expected a mapping with clusters, stores, databases and policies"]
        )

    scan = _DocumentScan(environ if environ is not None else os.environ)
    scan.visit(root, ())
    document = _construct(root, display_name)
    if not isinstance(document, dict):
        raise FleetError(
            [
                f"{display_name}:{scan.line_of(())}: expected a mapping with clusters, stores, databases "
                f"and policies at the top level, got {_describe_value(document)}"
            ]
        )

    findings = list(scan.findings)
    if "source" in document:
        # `source` is set by the loader, not the file; without this check YAML could override it.
        findings.append(_Finding(scan.line_of(("source",)), ("source",), _unknown_field_message("source", Fleet)))
    absolute_file = fleet_file.absolute()
    context = FleetValidationContext(fleet_dir=absolute_file.parent, check_references=False)
    fleet: Fleet | None = None
    try:
        fleet = Fleet.model_validate({**document, "source": absolute_file}, context=context)
    except ValidationError as exc:
        for error in exc.errors():
            loc, message = _translate_error(error, document)
            if not any(loc[: len(unresolved)] == unresolved for unresolved in scan.unresolved):
                findings.append(_Finding(scan.line_of(loc), loc, message))

    for problem in find_reference_problems(document):
        message = problem.message
        if problem.earlier is not None:
            message += f" ({problem.earlier_label} at line {scan.line_of(problem.earlier)})"
        findings.append(_Finding(scan.line_of(problem.loc), problem.loc, message))

    if findings or fleet is None:
        rendered = dict.fromkeys(finding.render(display_name) for finding in sorted(findings, key=lambda f: f.line))
        raise FleetError(list(rendered))
    return fleet


# --- reading ------------------------------------------------------------------------------------


def _read_text(fleet_file: Path, display_name: str) -> str:
    try:
        return fleet_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FleetError([f"fleet file not found: {display_name}"]) from None
    except IsADirectoryError:
        raise FleetError([f"fleet file is a directory, expected a YAML file: {display_name}"]) from None
    except UnicodeDecodeError as exc:
        raise FleetError([f"{display_name}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise FleetError([f"cannot read fleet file {display_name}: {exc.strerror}"]) from None


def _yaml_error(exc: yaml.YAMLError, display_name: str) -> FleetError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return FleetError(
            [f"{display_name}:{mark.line + 1}: YAML syntax error: {exc.problem}{context} at column {mark.column + 1}"]
        )
    return FleetError([f"{display_name}: YAML syntax error: {exc}"])


def _compose(text: str, display_name: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, display_name) from None


def _construct(root: yaml.Node, display_name: str) -> Any:
    constructor = yaml.SafeLoader("")
    try:
        return constructor.construct_document(root)
    except yaml.YAMLError as exc:  # e.g. an unknown tag such as `!secret`
        raise _yaml_error(exc, display_name) from None
    finally:
        constructor.dispose()


# --- node tree: line numbers, duplicate keys, interpolation -------------------------------------


@dataclass(frozen=True)
class _Finding:
    line: int
    loc: Loc
    message: str

    def render(self, display_name: str) -> str:
        where = f"{format_field_path(self.loc)}: " if self.loc else ""
        return f"{display_name}:{self.line}: {where}{self.message}"


class _DocumentScan:
    """Walks the composed node tree once: records the line of every field path, reports duplicate
    keys, and interpolates ``${VAR}`` in string values in place (before construction)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._lines: dict[Loc, int] = {}
        self._interpolated: set[int] = set()
        self._on_path: set[int] = set()
        self.findings: list[_Finding] = []
        self.unresolved: set[Loc] = set()
        """Paths whose interpolation failed; validation errors under them would only repeat it."""

    def line_of(self, loc: Loc) -> int:
        """The 1-based line of ``loc``, or of its nearest ancestor present in the file."""
        while loc not in self._lines and loc:
            loc = loc[:-1]
        return self._lines.get(loc, 1)

    def visit(self, node: yaml.Node, loc: Loc, line: int | None = None) -> None:
        self._lines.setdefault(loc, line if line is not None else node.start_mark.line + 1)
        if id(node) in self._on_path:  # a recursive alias; PyYAML allows `&a [*a]`
            return
        self._on_path.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                self._visit_mapping(node, loc)
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    self.visit(item, (*loc, index))
            elif isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG and "$" in node.value:
                self._interpolate(node, loc)
        finally:
            self._on_path.discard(id(node))

    def _visit_mapping(self, node: yaml.MappingNode, loc: Loc) -> None:
        first_lines: dict[object, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.visit(value_node, loc, self._lines[loc])
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                self.findings.append(_Finding(key_line, loc, "expected a field name, got a nested key"))
                continue
            if key in first_lines:
                self.findings.append(
                    _Finding(key_line, (*loc, key), f"duplicate key {key!r} (first at line {first_lines[key]})")
                )
            first_lines.setdefault(key, key_line)
            self.visit(value_node, (*loc, key), key_line)

    def _interpolate(self, node: yaml.ScalarNode, loc: Loc) -> None:
        if id(node) in self._interpolated:  # an alias seen twice: already substituted
            return
        self._interpolated.add(id(node))
        problems: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            body = match.group("body")
            parsed = _INTERPOLATION_BODY.fullmatch(body) if body is not None else None
            if parsed is None:
                problems.append(f"malformed {match.group(0)!r}: expected ${{VAR}} or ${{VAR:-default}}")
                return match.group(0)
            name, default = parsed.group("name"), parsed.group("default")
            value = self._environ.get(name)
            if default is not None and not value:  # shell semantics: `:-` also replaces empty
                return default
            if value is None:
                problems.append(f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
                return match.group(0)
            return value

        substituted = _INTERPOLATION.sub(substitute, node.value)
        if problems:
            self.unresolved.add(loc)
            line = node.start_mark.line + 1
            self.findings.extend(_Finding(line, loc, problem) for problem in problems)
        else:
            node.value = substituted


# --- pydantic errors -> plain English ------------------------------------------------------------


def _describe_value(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _document_loc(loc: Loc, document: object) -> Loc:
    """Drop the discriminator tags pydantic inserts into ``loc`` for store unions:
    ``("stores", 0, "s3", "bucket")`` -> ``("stores", 0, "bucket")``."""
    result: list[str | int] = []
    current: object = document
    for part in loc:
        if isinstance(current, Mapping) and part not in current and current.get("kind") == part:
            continue
        result.append(part)
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            current = None
    return tuple(result)


def _strip_optional(annotation: object) -> object:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType) and type(None) in get_args(annotation):
            members = [member for member in get_args(annotation) if member is not type(None)]
            annotation = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        else:
            return annotation


def _union_members_by_tag(annotation: object) -> dict[str, type[BaseModel]]:
    members: dict[str, type[BaseModel]] = {}
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            kind = getattr(member, "model_fields", {}).get("kind")
            if kind is not None and get_origin(kind.annotation) is Literal:
                members[get_args(kind.annotation)[0]] = member
    return members


def _annotation_at(loc: Loc) -> object | None:
    """The declared type at a pydantic ``loc`` (tags included), walking from :class:`Fleet`."""
    annotation: object = Fleet
    for part in loc:
        annotation = _strip_optional(annotation)
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif origin in (tuple, list) and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif origin in (dict, Mapping) and isinstance(part, str):
            annotation = get_args(annotation)[1]
        elif isinstance(part, str) and part in _union_members_by_tag(annotation):
            annotation = _union_members_by_tag(annotation)[part]
        else:
            return None
    return _strip_optional(annotation)


def _unknown_field_message(field: str | int, model: object) -> str:
    if isinstance(model, type) and issubclass(model, BaseModel):
        allowed = [name for name in model.model_fields if not (model is Fleet and name == "source")]
        return f"unknown field {field!r} (allowed: {', '.join(allowed)})"
    return f"unknown field {field!r}"


def _translate_error(error: ErrorDetails, document: object) -> tuple[Loc, str]:
    """One pydantic error as (field path in the document, plain-English message)."""
    loc: Loc = tuple(error["loc"])
    path = _document_loc(loc, document)
    error_type = error["type"]
    context: dict[str, Any] = dict(error.get("ctx") or {})
    got = _describe_value(error.get("input"))

    if error_type == "missing":
        return path, "required field missing"
    if error_type == "extra_forbidden":
        return path, _unknown_field_message(loc[-1], _annotation_at(loc[:-1]))
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        tags = ", ".join(_union_members_by_tag(_annotation_at(loc)))
        if error_type == "union_tag_not_found":
            return (*path, "kind"), f"required field missing (one of {tags})"
        return (*path, "kind"), f"expected one of {tags}, got {_describe_value(context.get('tag'))}"
    if error_type == "literal_error":
        annotation = _annotation_at(loc)
        options = get_args(annotation) if get_origin(annotation) is Literal else ()
        expected = ", ".join(map(str, options)) if options else context.get("expected", "")
        return path, f"expected one of {expected}, got {got}"
    if error_type in ("value_error", "assertion_error"):
        return path, str(context.get("error", error["msg"]))
    plain_messages = {
        "int_type": f"expected a whole number, got {got}",
        "int_parsing": f"expected a whole number, got {got}",
        "int_from_float": f"expected a whole number, got {got}",
        "greater_than_equal": f"expected a number of at least {context.get('ge')}, got {got}",
        "greater_than": f"expected a number greater than {context.get('gt')}, got {got}",
        "string_type": f"expected text, got {got}",
        "bool_type": f"expected true or false, got {got}",
        "bool_parsing": f"expected true or false, got {got}",
        "path_type": f"expected a path, got {got}",
        "model_type": f"expected a mapping, got {got}",
        "model_attributes_type": f"expected a mapping, got {got}",
        "dict_type": f"expected a mapping, got {got}",
        "mapping_type": f"expected a mapping, got {got}",
        "tuple_type": f"expected a list, got {got}",
        "list_type": f"expected a list, got {got}",
        "too_short": (
            "expected at least one entry, got none"
            if context.get("min_length") == 1
            else f"expected at least {context.get('min_length')} entries, got {context.get('actual_length')}"
        ),
        "string_too_short": "must not be empty",
    }
    return path, plain_messages.get(error_type, error["msg"])
