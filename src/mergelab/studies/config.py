"""The study's configuration: one YAML file (a preset, or a copy a user edits)."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mergelab.errors import MergeError
from mergelab.yamlfile import read_mapping, validate

PAPER_FACTORS = (1, 2, 5, 10, 20, 50, 70, 90, 100, 110, 130, 150)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IndependentSpec(_Strict):
    """Independently initialised ingredients, the contrast to a shared start."""

    archs: list[str] = []
    datasets: list[str] | None = None  # None: every dataset of the study


class TemplatesSpec(_Strict):
    enabled: bool = True
    arch: str = "linear"
    """A built-in whose head is a Linear on the flattened image (its rows are templates)."""
    kernels_arch: str | None = "cnn"
    """Arch whose first conv layer's kernels are drawn (None: none)."""


class CrossTaskSpec(_Strict):
    """A model of one dataset averaged with a model of another, both from the same init."""

    pairs: list[tuple[str, str]] = []
    arch: str = "mlp"
    channels: int = 1
    img_size: int = 28


class MagnitudeSpec(_Strict):
    enabled: bool = True
    factors: list[float] = list(PAPER_FACTORS)
    scaled: list[Literal["all", "first", "all_but_first"]] = ["all"]
    tensors: list[Literal["all", "weights", "no_norm_stats"]] = ["all"]
    n_models: list[int] = [2, 10]
    targets: list[tuple[str, str]] = []
    """(dataset, arch) pairs to sweep; empty: every pair of the study."""
    batch_factors: list[float] = [1, 50, 150]
    batch_size: int = 100
    """Samples per batch in the per-batch scatter of merge against ensemble accuracy."""


class StudyConfig(_Strict):
    """What ``mergelab study`` runs. ``training`` holds the ingredient recipe fields
    (``pretrain``, ``train``, ``lrs``, ``augment``) for every run; ``dataset_training``
    and then ``arch_training`` override them per dataset and per arch (merged key by key,
    sections like ``pretrain`` field by field)."""

    name: str = "study"
    seed: int = 0
    datasets: list[str]
    archs: list[str]
    n_models: int = Field(10, ge=1)
    model_counts: list[int] = [2, 3, 5, 7, 10]
    batch_size: int = 256
    device: str | None = None
    training: dict[str, Any] = {}
    dataset_training: dict[str, dict[str, Any]] = {}
    arch_training: dict[str, dict[str, Any]] = {}
    independent: IndependentSpec = IndependentSpec()
    templates: TemplatesSpec = TemplatesSpec()
    cross_task: CrossTaskSpec = CrossTaskSpec()
    magnitude: MagnitudeSpec = MagnitudeSpec()
    weight_stats: bool = True

    def counts(self) -> list[int]:
        """Model counts of the weights-vs-features comparison that the ingredients allow."""
        return sorted({n for n in self.model_counts if 1 < n <= self.n_models})

    def training_for(self, arch: str, dataset: str) -> dict[str, Any]:
        """Recipe fields of one run: ``training``, then the dataset's, then the arch's."""
        merged = copy.deepcopy(self.training)
        for override in (self.dataset_training.get(dataset, {}), self.arch_training.get(arch, {})):
            for key, value in override.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
        return merged


PRESETS = ("quick", "paper", "tiny")


def preset_path(name: str) -> Path:
    return Path(str(resources.files("mergelab.presets").joinpath(f"{name}.yaml")))


def load_config(source: str | Path | None) -> tuple[StudyConfig, str]:
    """A preset name (``quick``, ``paper``, ``tiny``) or a YAML path -> (config, its text)."""
    source = "quick" if source is None else source
    path = preset_path(str(source)) if str(source) in PRESETS else Path(source)
    if not path.is_file():
        raise MergeError(f"{path}: no such study config; presets: {', '.join(PRESETS)}")
    config = validate(StudyConfig, read_mapping(path, "study config"), path, "study config")
    return config, path.read_text()
