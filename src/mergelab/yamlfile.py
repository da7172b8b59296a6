"""Reading a YAML config into a pydantic model, with errors that name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mergelab.errors import MergeError

Model = TypeVar("Model", bound=BaseModel)


def field_errors(exc: ValidationError) -> str:
    """One indented line per invalid field: ``  models.0.model: Field required``."""
    return "\n".join(
        f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; ``what`` names the kind of file in errors."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MergeError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise MergeError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise MergeError(f"{path}: a {what} is a YAML mapping")
    return data


def validate(model: type[Model], data: dict[str, Any], path: str | Path, what: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MergeError(f"{path}: invalid {what}:\n{field_errors(exc)}") from None
