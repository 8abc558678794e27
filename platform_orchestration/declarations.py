"""Declaration files (the fleet file, job and schedule specs): YAML -> pydantic model, with located errors.

Every problem becomes one :class:`Finding`, rendered ``FILE:LINE: field.path: what was expected``.
Contract:

* :func:`read_yaml_mapping` raises :class:`DeclarationError` (one line) only for problems that stop
  reading: the file is missing or unreadable, is not YAML, is empty or its top level is no mapping.
* Everything else is collected on the returned :class:`YamlDocument` (duplicate keys, ``${VAR}``
  interpolation, schema validation by :meth:`YamlDocument.validate`, and whatever the caller adds
  with :meth:`YamlDocument.report`), so a file's problems are reported together, never as a traceback.
* Line numbers come from the composed YAML node tree, keyed by the field paths pydantic uses.
  A path that is not in the file (a missing field) gets the line of its nearest ancestor.
* Tagged unions: the tag pydantic inserts into an error's ``loc`` is dropped from the field path.
  A union member's tag is its ``Tag(...)`` annotation or else the ``Literal`` value of its ``kind``
  field; a missing or unknown tag is reported at the ``kind`` field.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    TypeAlias,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

import yaml
from pydantic import BaseModel, Tag, ValidationError
from pydantic_core import ErrorDetails

from platform_orchestration.errors import InvalidDeclaration

__all__ = [
    "DeclarationError",
    "Finding",
    "Loc",
    "Origin",
    "YamlDocument",
    "describe_value",
    "format_field_path",
    "known_names",
    "read_yaml_mapping",
    "render_findings",
]

Loc: TypeAlias = tuple[str | int, ...]
"""A field path inside a document, as in pydantic's ``loc``: ``("databases", 1, "policy")``."""

ModelT = TypeVar("ModelT", bound=BaseModel)

TAG_FIELD = "kind"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# "$${" is a literal "${"; an unclosed "${" is caught by the last alternative.
_INTERPOLATION = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_INTERPOLATION_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


class DeclarationError(InvalidDeclaration):
    """A declaration file cannot be used. ``errors`` holds one ``FILE:LINE: PATH: message`` per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def format_field_path(loc: Loc) -> str:
    """``("databases", 1, "policy")`` -> ``databases[1].policy``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_value(value: object) -> str:
    """A short, plain description of a YAML value for ``got ...`` messages."""
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


def known_names(names: Iterable[str]) -> str:
    """``known: a, b`` (sorted), or ``none defined``; for ``unknown X 'y' (...)`` messages."""
    ordered = sorted(set(names))
    return f"known: {', '.join(ordered)}" if ordered else "none defined"


@dataclass(frozen=True)
class Finding:
    """One problem: in ``source`` (the file as named to the user) at ``line`` (``None``: unknown)."""

    source: str
    line: int | None
    loc: Loc
    message: str

    def render(self) -> str:
        """``FILE:LINE: field.path: message``; the path is left out for the whole document."""
        where = f"{format_field_path(self.loc)}: " if self.loc else ""
        position = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{position}: {where}{self.message}"


def render_findings(findings: Iterable[Finding]) -> list[str]:
    """The findings rendered in file and line order (stable otherwise), each distinct line once."""
    ordered = sorted(findings, key=lambda finding: (finding.source, finding.line or 0))
    return list(dict.fromkeys(finding.render() for finding in ordered))


class YamlDocument:
    """A YAML file read into plain ``data`` (a mapping) that knows the line of every field path.

    ``findings`` holds the problems found so far; callers check it (and the result of
    :meth:`validate`) before trusting the document.
    """

    def __init__(self, source: str, data: dict[str, Any], scan: _DocumentScan) -> None:
        self.source = source
        self.data = data
        self._scan = scan
        self.findings: list[Finding] = list(scan.findings)

    def line_of(self, loc: Loc) -> int:
        """The 1-based line of ``loc``, or of its nearest ancestor present in the file."""
        return self._scan.line_of(loc)

    def finding(self, loc: Loc, message: str) -> Finding:
        """A finding at ``loc`` in this document (not recorded; see :meth:`report`)."""
        return Finding(self.source, self.line_of(loc), loc, message)

    def report(self, loc: Loc, message: str) -> None:
        """Record a problem at ``loc``."""
        self.findings.append(self.finding(loc, message))

    def validate(
        self,
        model: type[ModelT],
        *,
        context: object = None,
        supplied: Mapping[str, object] | None = None,
    ) -> ModelT | None:
        """Validate the data as ``model``; on failure record every error in plain English, return ``None``.

        ``supplied`` are top-level fields the loader sets (e.g. the file's own path): the file may
        not set them, and they are left out of the fields an "unknown field" message lists.
        Errors under a path whose ``${VAR}`` could not be interpolated are not repeated.
        """
        supplied = dict(supplied or {})
        hidden = frozenset(supplied)
        for name in supplied:
            if name in self.data:
                # Without this check the file could override what the loader supplies.
                self.report((name,), _unknown_field_message(name, model, model, hidden))
        try:
            return model.model_validate({**self.data, **supplied}, context=context)
        except ValidationError as exc:
            for error in exc.errors():
                loc, message = _translate_error(error, model, hidden)
                if not self._scan.is_unresolved(loc):
                    self.report(loc, message)
            return None


@dataclass(frozen=True)
class Origin:
    """Where a validated part of a document was written: ``document`` at field path ``loc``."""

    document: YamlDocument
    loc: Loc

    def finding(self, sub: Loc, message: str) -> Finding:
        """A finding at ``sub`` (a path relative to this part)."""
        return self.document.finding((*self.loc, *sub), message)

    def position(self, sub: Loc = (), *, seen_from: str | None = None) -> str:
        """``line N`` when ``seen_from`` names the same file, else ``FILE:N``."""
        line = self.document.line_of((*self.loc, *sub))
        return f"line {line}" if seen_from == self.document.source else f"{self.document.source}:{line}"


def read_yaml_mapping(
    path: str | os.PathLike[str],
    *,
    what: str,
    expected: str,
    environ: Mapping[str, str] | None = None,
) -> YamlDocument:
    """Read the YAML file at ``path``, whose top level must be a mapping.

    ``what`` names the file in messages (``"fleet file"``); ``expected`` says what its top level
    should hold (``"a mapping with a jobs list"``). With ``environ``, ``${VAR}`` and
    ``${VAR:-default}`` in string values are interpolated from it (``$${`` is a literal ``${``);
    without, strings are taken literally. The file is named in messages as ``path`` was given.
    Raises :class:`DeclarationError` when the file cannot be read as a mapping at all.
    """
    display_name = os.fspath(path)
    text = _read_text(Path(display_name), display_name, what)
    root = _compose(text, display_name)
    if root is None:
        raise DeclarationError([f"{display_name}: the {what} is empty; expected {expected}"])

    scan = _DocumentScan(display_name, environ)
    scan.visit(root, ())
    data = _construct(root, display_name)
    if not isinstance(data, dict):
        raise DeclarationError(
            [f"{display_name}:{scan.line_of(())}: expected {expected} at the top level, got {describe_value(data)}"]
        )
    return YamlDocument(display_name, data, scan)


# --- reading ------------------------------------------------------------------------------------


def _read_text(file: Path, display_name: str, what: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeclarationError([f"{what} not found: {display_name}"]) from None
    except IsADirectoryError:
        raise DeclarationError([f"{what} is a directory, expected a YAML file: {display_name}"]) from None
    except UnicodeDecodeError as exc:
        raise DeclarationError([f"{display_name}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise DeclarationError([f"cannot read {what} {display_name}: {exc.strerror}"]) from None


def _yaml_error(exc: yaml.YAMLError, display_name: str) -> DeclarationError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return DeclarationError(
            [f"{display_name}:{mark.line + 1}: YAML syntax error: {exc.problem}{context} at column {mark.column + 1}"]
        )
    return DeclarationError([f"{display_name}: YAML syntax error: {exc}"])


# libyaml's parser (when PyYAML was built with it) composes the same node tree with the same
# line marks about 3x faster than the pure-Python one: most of a large fleet file's load time.
_FAST_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None) if yaml.__with_libyaml__ else None


def _compose(text: str, display_name: str) -> yaml.Node | None:
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            pass  # reported below in the pure-Python parser's words, the same on every machine
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


class _DocumentScan:
    """Walks the composed node tree once: records the line of every field path, reports duplicate
    keys, and (given an environment) interpolates ``${VAR}`` in string values in place, before
    construction."""

    def __init__(self, source: str, environ: Mapping[str, str] | None) -> None:
        self._source = source
        self._environ = environ
        self._lines: dict[Loc, int] = {}
        self._interpolated: set[int] = set()
        self._on_path: set[int] = set()
        self.findings: list[Finding] = []
        self._unresolved: set[Loc] = set()
        """Paths whose interpolation failed; validation errors under them would only repeat it."""

    def line_of(self, loc: Loc) -> int:
        while loc not in self._lines and loc:
            loc = loc[:-1]
        return self._lines.get(loc, 1)

    def is_unresolved(self, loc: Loc) -> bool:
        return any(loc[: len(unresolved)] == unresolved for unresolved in self._unresolved)

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
            elif (
                self._environ is not None
                and isinstance(node, yaml.ScalarNode)
                and node.tag == _STR_TAG
                and "$" in node.value
            ):
                self._interpolate(node, loc, self._environ)
        finally:
            self._on_path.discard(id(node))

    def _add(self, line: int, loc: Loc, message: str) -> None:
        self.findings.append(Finding(self._source, line, loc, message))

    def _visit_mapping(self, node: yaml.MappingNode, loc: Loc) -> None:
        first_lines: dict[object, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                self.visit(value_node, loc, self._lines[loc])
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                self._add(key_line, loc, "expected a field name, got a nested key")
                continue
            if key in first_lines:
                self._add(key_line, (*loc, key), f"duplicate key {key!r} (first at line {first_lines[key]})")
            first_lines.setdefault(key, key_line)
            self.visit(value_node, (*loc, key), key_line)

    def _interpolate(self, node: yaml.ScalarNode, loc: Loc, environ: Mapping[str, str]) -> None:
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
            value = environ.get(name)
            if default is not None and not value:  # shell semantics: `:-` also replaces empty
                return default
            if value is None:
                problems.append(f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
                return match.group(0)
            return value

        substituted = _INTERPOLATION.sub(substitute, node.value)
        if problems:
            self._unresolved.add(loc)
            line = node.start_mark.line + 1
            for problem in problems:
                self._add(line, loc, problem)
        else:
            node.value = substituted


# --- pydantic errors -> plain English ------------------------------------------------------------


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


def _explicit_tag(member: object) -> str | None:
    if get_origin(member) is Annotated:
        for metadata in getattr(member, "__metadata__", ()):
            if isinstance(metadata, Tag):
                return metadata.tag
    return None


def _union_members_by_tag(annotation: object) -> dict[str, object]:
    """``{tag: member type}`` of a tagged union; empty for anything else."""
    members: dict[str, object] = {}
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            tag = _explicit_tag(member)
            member_type = _strip_optional(member)
            if tag is None:
                kind = getattr(member_type, "model_fields", {}).get(TAG_FIELD)
                if kind is not None and get_origin(kind.annotation) is Literal:
                    tag = get_args(kind.annotation)[0]
            if tag is not None:
                members[tag] = member_type
    return members


def _step(annotation: object, part: str | int) -> object | None:
    """The declared type one ``loc`` part below ``annotation`` (a union tag selects its member)."""
    annotation = _strip_optional(annotation)
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    if origin in (tuple, list) and isinstance(part, int):
        return get_args(annotation)[0]
    if origin in (dict, Mapping) and isinstance(part, str):
        return get_args(annotation)[1]
    if isinstance(part, str):
        return _union_members_by_tag(annotation).get(part)
    return None


def _annotation_at(loc: Loc, root: type[BaseModel]) -> object | None:
    """The declared type at a pydantic ``loc`` (tags included), walking from ``root``."""
    annotation: object | None = root
    for part in loc:
        if annotation is None:
            return None
        annotation = _step(annotation, part)
    return _strip_optional(annotation) if annotation is not None else None


def _document_loc(loc: Loc, root: type[BaseModel]) -> Loc:
    """Drop the union tags pydantic inserts into ``loc``:
    ``("stores", 0, "s3", "bucket")`` -> ``("stores", 0, "bucket")``."""
    result: list[str | int] = []
    annotation: object | None = root
    for part in loc:
        tags = _union_members_by_tag(_strip_optional(annotation)) if annotation is not None else {}
        if isinstance(part, str) and part in tags:
            annotation = tags[part]
            continue
        result.append(part)
        annotation = _step(annotation, part) if annotation is not None else None
    return tuple(result)


def _unknown_field_message(field: str | int, model: object, root: type[BaseModel], hidden: frozenset[str]) -> str:
    if isinstance(model, type) and issubclass(model, BaseModel):
        allowed = [name for name in model.model_fields if not (model is root and name in hidden)]
        return f"unknown field {field!r} (allowed: {', '.join(allowed)})"
    return f"unknown field {field!r}"


def _translate_error(error: ErrorDetails, root: type[BaseModel], hidden: frozenset[str]) -> tuple[Loc, str]:
    """One pydantic error as (field path in the document, plain-English message)."""
    loc: Loc = tuple(error["loc"])
    path = _document_loc(loc, root)
    error_type = error["type"]
    context: dict[str, Any] = dict(error.get("ctx") or {})
    got = describe_value(error.get("input"))

    if error_type == "missing":
        return path, "required field missing"
    if error_type == "extra_forbidden":
        return path, _unknown_field_message(loc[-1], _annotation_at(loc[:-1], root), root, hidden)
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        tags = ", ".join(_union_members_by_tag(_annotation_at(loc, root)))
        if error_type == "union_tag_not_found":
            return (*path, TAG_FIELD), f"required field missing (one of {tags})"
        return (*path, TAG_FIELD), f"expected one of {tags}, got {describe_value(context.get('tag'))}"
    if error_type == "literal_error":
        annotation = _annotation_at(loc, root)
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
