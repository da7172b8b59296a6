"""Reading a YAML config into a pydantic model, with one error line naming file and key.

Every config file (merge recipe, study config, training recipe) goes through
:func:`validate`, so a bad value never shows a pydantic traceback: it becomes
``<file>: <dotted.key>: <problem> (allowed: ...)``.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mergelab.errors import MergeError, MergelabError

Model = TypeVar("Model", bound=BaseModel)

# What a value of the wrong type should have been, by pydantic error type.
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "tuple": "a list",
    "dict": "a mapping (key: value)",
    "model": "a mapping (key: value)",
    "model_attributes": "a mapping (key: value)",
}
_BOUNDS = {
    "greater_than": ("too small", "> {gt}"),
    "greater_than_equal": ("too small", ">= {ge}"),
    "less_than": ("too large", "< {lt}"),
    "less_than_equal": ("too large", "<= {le}"),
}


def key_path(*parts: str | int) -> str:
    """``("cross_task", "pairs", 0, 1)`` -> ``cross_task.pairs[0][1]``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def model_at(model: type[BaseModel] | None, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model whose field ``loc`` names (``("train", "lrr")`` in a recipe:
    ``TrainSettings``), or None where ``loc`` leaves the models (a dict, a list item)."""
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *typing.get_args(annotation)]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return model


def describe(err: Any, model: type[BaseModel] | None = None, known: Sequence[str] = ()) -> str:
    """One pydantic error as ``<problem> (allowed: ...)``; ``model`` is the validated model
    (to list the keys allowed next to an unknown one), ``known`` overrides that list."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = list(known)
        if not allowed:
            owner = model_at(model, loc[:-1])
            allowed = list(owner.model_fields) if owner is not None else []
        return "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return "missing; this key is required"
    if kind in _BOUNDS:
        what, bound = _BOUNDS[kind]
        bounds = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        return f"{_shown(value)} is {what} (allowed: {bound.format(**bounds)})"
    if kind == "literal_error":
        return f"{_shown(value)} is not a choice (allowed: {ctx.get('expected')})"
    if kind == "int_parsing_size":  # 1e23: pydantic's message names no size
        return f"{_shown(value)} is too large for an integer"
    if kind == "finite_number":
        return f"{_shown(value)} is not a finite number (allowed: finite numbers)"
    base = kind.removesuffix("_parsing").removesuffix("_type").removesuffix("_from_float")
    if base in _EXPECTED and kind != base:
        return f"{_shown(value)} is not {_EXPECTED[base]}"
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def one_line(problems: Sequence[str]) -> str:
    """The first problem, and how many more there are (an error is one line)."""
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """``<dotted.key>: <problem>`` for each error of ``exc`` (raised validating ``model``)."""
    out = []
    for err in exc.errors():
        where = key_path(*err["loc"])
        problem = describe(err, model)
        out.append(f"{where}: {problem}" if where else problem)
    return out


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, where: str, first: int, second: int) -> None:
        super().__init__(
            f"{where}: given twice, on lines {first} and {second} (allowed: each key once; "
            "YAML would silently keep the last)"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently: ``merge_method: ties`` then ``merge_method: linear`` merges with
    linear). Keys brought in by a ``<<:`` merge may be overridden, as YAML intends."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_keys(node, (), set())
        return super().construct_document(node)

    def _check_keys(self, node: yaml.Node, where: tuple[str | int, ...], seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                self._check_keys(child, (*where, i), seen)
        if not isinstance(node, yaml.MappingNode):
            return
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._check_keys(value_node, where, seen)
                continue
            if isinstance(key_node, yaml.ScalarNode):
                plain = key_node.tag == "tag:yaml.org,2002:value"  # "=": a str once flattened
                key = key_node.value if plain else self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise _DuplicateKey(key_path(*where, key_node.value), lines[key], line)
                lines[key] = line
            self._check_keys(value_node, (*where, str(key_node.value)), seen)


def read_mapping(
    path: str | Path, what: str, error: type[MergelabError] = MergeError
) -> dict[str, Any]:
    """The YAML mapping in ``path``; ``what`` names the kind of file in errors. A key given
    twice in one mapping is an error (naming both lines), not "the last one wins"."""
    path = Path(path)
    try:
        loader = _UniqueKeyLoader(path.read_text())
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file; a {what} is YAML") from None
    except _DuplicateKey as exc:
        raise error(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} is a YAML mapping (key: value lines)")
    return data


def validate(
    model: type[Model],
    data: dict[str, Any],
    path: str | Path,
    what: str,
    error: type[MergelabError] = MergeError,
) -> Model:
    """``data`` as a ``model``; a problem raises ``error``: one line naming ``path`` and
    the first bad key (``what`` names the file's kind where no key is at fault)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, model)
        first = exc.errors()[0]["loc"]
        prefix = f"{path}: " if first else f"{path}: invalid {what}: "
        raise error(prefix + one_line(problems)) from None
