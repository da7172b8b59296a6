"""A merge recipe: the YAML a user writes (close to mergekit's) and the record we keep.

merge_method: ties
base_model: base.safetensors
models:
  - model: a.safetensors
    parameters: {weight: 1.0, density: 0.5}
  - model: b.safetensors
parameters: {lambda: 1.0}     # global; also the default of per-model parameters
dtype: float32                # output dtype of floating tensors (needed for mixed inputs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from mergelab.errors import MergeError
from mergelab.yamlfile import read_mapping, validate

Scalar = float | int | bool | str


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    parameters: dict[str, Scalar] = {}


class Recipe(BaseModel):
    """What to merge and how; everything a merge needs to be repeated."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Scalar] = {}
    dtype: str | None = None
    key: str | None = None
    """Torch checkpoints: dotted key of the state dict inside the file (detected if unset)."""
    strip_prefix: str | None = None
    """Torch checkpoints: prefix removed from every name (``module.`` detected if unset)."""

    @field_validator("models", mode="before")
    @classmethod
    def _plain_paths(cls, value: Any) -> Any:
        # Accept a bare list of paths as well as mergekit's list of {model: ...}.
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        path = Path(path)
        data = read_mapping(path, "recipe")
        _reject_schedules(data, path)
        return validate(cls, data, path, "recipe")

    def to_yaml(self, header: str = "") -> str:
        body = yaml.safe_dump(self.model_dump(exclude_defaults=True), sort_keys=False)
        return header + body


def _reject_schedules(data: dict, path: Path) -> None:
    """mergekit allows per-layer schedules (lists, filters); say plainly that we do not."""
    places = [("parameters", data.get("parameters") or {})]
    for i, entry in enumerate(data.get("models") or []):
        if isinstance(entry, dict):
            places.append((f"models[{i}].parameters", entry.get("parameters") or {}))
    for where, params in places:
        if not isinstance(params, dict):
            continue
        for name, value in params.items():
            if isinstance(value, list | dict):
                raise MergeError(
                    f"{path}: {where}.{name}: per-layer schedules and filters are not "
                    f"supported; give one number"
                )


def parse_assignment(text: str) -> tuple[str, Scalar]:
    """``density=0.2`` -> ("density", 0.2); values are read as YAML scalars."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise MergeError(f"--param {text!r}: expected NAME=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise MergeError(f"--param {text!r}: the value is not a YAML scalar") from None
    if not isinstance(value, float | int | bool | str):
        raise MergeError(f"--param {text!r}: value must be a number, true/false or a word")
    return name.strip(), value
