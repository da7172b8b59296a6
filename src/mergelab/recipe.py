"""A merge recipe: the YAML a user writes (close to mergekit's) and the record we keep.

merge_method: ties
base_model: base.safetensors
models:
  - model: a.safetensors
    parameters: {weight: 1.0, density: 0.5}
  - model: b.safetensors
parameters: {lambda: 1.0}     # global; also the default of per-model parameters
dtype: float32                # output dtype of floating tensors (needed for mixed inputs)

mergekit's own keys are read too: ``out_dtype`` (the output dtype; ``dtype`` is then
mergekit's compute dtype, and mergelab keeps its float32 sums unless ``compat: mergekit``
asks for mergekit's arithmetic, byte for byte), ``tokenizer_source`` and
``chat_template`` (folder outputs: :mod:`mergelab.io.hf_folder`), per-layer gradients and
name filters as parameter values (:mod:`mergelab.schedules`), ``slices`` of layers instead
of ``models`` (:mod:`mergelab.engine.slices`), ``int8_mask`` (ignored, with a note),
``tokenizer_source: union`` and ``tokenizer`` (merged vocabularies:
:mod:`mergelab.io.tokenizer_merge`). What mergelab does not do yet is refused, every such
field named in one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from mergelab import schedules
from mergelab.errors import MergeError
from mergelab.io.tokenizer_merge import TokenizerSettings, tokenizer_problems
from mergelab.yamlfile import read_mapping, validate

Scalar = float | int | bool | str


Setting = Scalar | list[Any]
"""A parameter: one value, or a per-layer schedule or filter list (mergelab.schedules)."""


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    parameters: dict[str, Setting] = {}


IGNORED_PARAMETERS = {
    "int8_mask": "int8_mask: memory option of mergekit (its masks stored as int8), not needed "
    "here: mergelab streams tensor by tensor; ignored",
}
"""mergekit parameters accepted and ignored, with what the user is told."""
LOW_PRECISION = {"float16", "fp16", "half", "f16", "bfloat16", "bf16"}
UNSUPPORTED_KEYS: dict[str, str] = {}
"""mergekit recipe keys mergelab does not do yet, and why."""


class SliceSource(BaseModel):
    """One model's layers ``[start, stop)`` in a slice, with its own parameters."""

    model_config = ConfigDict(extra="forbid")

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Setting] = {}


class SliceDef(BaseModel):
    """Output layers made from the same number of layers of each source (one source:
    copied, ``passthrough``; several: merged layer by layer by the recipe's method)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SliceSource]
    parameters: dict[str, Setting] = {}
    base_model: str | None = None
    """This slice's base (one of its sources), instead of the recipe's ``base_model``."""


class Recipe(BaseModel):
    """What to merge and how; everything a merge needs to be repeated."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str
    models: list[ModelEntry] = []
    slices: list[SliceDef] | None = None
    """mergekit's layer slices (:mod:`mergelab.engine.slices`), instead of ``models``."""
    base_model: str | None = None
    parameters: dict[str, Setting] = {}
    dtype: str | None = None
    """The output dtype of floating tensors (mergelab computes in float32 or float64)."""
    out_dtype: str | None = None
    """mergekit's name for the output dtype; given with ``dtype``, ``dtype`` is mergekit's
    compute dtype, which mergelab does not lower (its sums stay in float32 or float64)
    unless ``compat`` is ``mergekit``."""
    compat: Literal["mergekit"] | None = None
    """``mergekit``: compute as mergekit does, in the recipe's ``dtype`` (else the inputs'),
    rounding where mergekit's torch code rounds (``mergelab merge --compat mergekit``).
    Unset: float32 (float64) throughout, rounded once to the output dtype: more accurate."""
    key: str | None = None
    """Torch checkpoints: dotted key of the state dict inside the file (detected if unset)."""
    strip_prefix: str | None = None
    """Torch checkpoints: prefix removed from every name (``module.`` detected if unset)."""
    tokenizer_source: str | None = None
    """Folder outputs: the tokenizer files' source, ``base`` or a model's path (default:
    the folder the config comes from); ``union``, or vocabularies that differ: merged."""
    chat_template: str | None = None
    """Folder outputs: a Jinja chat template (or ``chatml``) for tokenizer_config.json."""
    tokenizer: TokenizerSettings | None = None
    """mergekit's tokenizer merging (:mod:`mergelab.io.tokenizer_merge`): the output
    vocabulary's ``source`` (``union``, ``base``, a model), ``tokens``, ``pad_to_multiple_of``."""
    _notes: list[str] = PrivateAttr(default_factory=list)
    _from_file: bool = PrivateAttr(default=False)  # a YAML recipe reads as mergekit's

    @field_validator("models", mode="before")
    @classmethod
    def _plain_paths(cls, value: Any) -> Any:
        # Accept a bare list of paths as well as mergekit's list of {model: ...}.
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def inputs(self) -> list[str]:
        """Every model path the recipe names, once, in order (models or slice sources)."""
        names = [e.model for e in self.models] or [
            src.model for sl in self.slices or [] for src in sl.sources
        ]
        return list(dict.fromkeys(names))

    @property
    def notes(self) -> list[str]:
        """What was accepted and ignored, or read differently from mergekit."""
        note = self.compute_note
        return [*self._notes, *([note] if note else [])]

    @property
    def output_dtype(self) -> str | None:
        return self.out_dtype if self.out_dtype is not None else self.dtype

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        path = Path(path)
        data = read_mapping(path, "recipe")
        data, notes = _mergekit_options(data, path)
        recipe = validate(cls, data, path, "recipe")
        recipe._notes = notes
        recipe._from_file = True
        return recipe

    @property
    def is_mergekit_file(self) -> bool:
        """Read from a YAML file, which mergelab reads as mergekit's (notes say where the
        two read it differently)."""
        return self._from_file

    @property
    def compute_note(self) -> str | None:
        """How the arithmetic differs from mergekit's for this recipe's dtypes, if it does:
        mergekit computes in ``dtype``; mergelab, unless ``compat: mergekit``, in float32."""
        if not self.is_mergekit_file or self.compat == "mergekit" or self.dtype is None:
            return None
        low = self.dtype.strip().lower() in LOW_PRECISION
        if self.out_dtype is None and not low:
            return None
        writes = f"writes out_dtype {self.out_dtype}" if self.out_dtype else "rounds once"
        return (
            f"dtype: {self.dtype} is mergekit's compute dtype; mergelab computes in float32 "
            f"(float64 for float64 inputs) and {writes}"
            + ("; --compat mergekit computes as mergekit does" if low else "")
        )

    def to_yaml(self, header: str = "") -> str:
        body = yaml.safe_dump(self.model_dump(exclude_defaults=True), sort_keys=False)
        return header + body


def _mergekit_options(data: dict, path: Path) -> tuple[dict, list[str]]:
    """``data`` without the mergekit options mergelab accepts and ignores (and a note for
    each), after refusing, all in one line, every mergekit feature it does not do (such as
    ``tokenizer``), every unknown key and every malformed schedule."""
    problems = [f"{k}: {why}" for k, why in UNSUPPORTED_KEYS.items() if k in data]
    problems += tokenizer_problems(data)
    allowed = ", ".join(Recipe.model_fields)
    problems += [
        f"{k}: unknown key (allowed: {allowed})"
        for k in data
        if k not in Recipe.model_fields and k not in UNSUPPORTED_KEYS
    ]
    data = copy.deepcopy(data)
    notes: list[str] = []
    for where, params in _parameter_sets(data):
        for name, value in list(params.items()):
            problems += schedules.problems(value, f"{where}.{name}")
            if name in IGNORED_PARAMETERS:
                del params[name]
                if IGNORED_PARAMETERS[name] not in notes:
                    notes.append(IGNORED_PARAMETERS[name])
    if problems:
        raise MergeError(f"{path}: not supported: " + "; ".join(problems))
    return data, notes


def _parameter_sets(data: dict) -> list[tuple[str, dict]]:
    """Every ``parameters`` mapping of a raw recipe (global, per model, per slice and
    source), with where it is."""
    out: list[tuple[str, Any]] = [("parameters", data.get("parameters"))]
    for i, entry in enumerate(data.get("models") or []):
        if isinstance(entry, dict):
            out.append((f"models[{i}].parameters", entry.get("parameters")))
    for i, sl in enumerate(data.get("slices") or []):
        if not isinstance(sl, dict):
            continue
        out.append((f"slices[{i}].parameters", sl.get("parameters")))
        for j, src in enumerate(sl.get("sources") or []):
            if isinstance(src, dict):
                out.append((f"slices[{i}].sources[{j}].parameters", src.get("parameters")))
    return [(where, p) for where, p in out if isinstance(p, dict)]


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
