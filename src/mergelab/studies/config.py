"""The study's configuration: one YAML file (a preset, or a copy a user edits)."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from mergelab.errors import ConfigError
from mergelab.yamlfile import read_mapping, validate

# mergelab.train.config.MAX_SEED and MAX_SIDE, mergelab.train.recipe.MAX_MODELS (not
# imported here: mergelab.train imports torch).
MAX_SEED = 2**32 - 1
MAX_SIDE = 4096
MAX_MODELS = 999
# A study's name is the default output folder, mergelab-study-NAME: one plain folder name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PAPER_FACTORS = (1, 2, 5, 10, 20, 50, 70, 90, 100, 110, 130, 150)
BN_MODES = ("running", "running_c2", "batch")
MODEL_COUNTS = (2, 3, 5, 7, 10)
BATCH_FACTORS = (1, 50, 150)

# A problem found by a spec's own checks: (location below the spec, one-line message).
Problem = tuple[tuple[str | int, ...], str]


def _values(values: Iterable[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _repeats(name: str, values: Iterable[Any]) -> list[Problem]:
    """A problem naming the values of ``name`` given more than once (none: [])."""
    seen: list[Any] = []
    twice: list[Any] = []
    for v in values:
        if v in seen and v not in twice:
            twice.append(v)
        seen.append(v)
    return [((name,), f"{_values(twice)} given twice")] if twice else []


def _method_problems(
    name: str, methods: Sequence[str], params: dict[str, dict[str, Any]] | None = None
) -> list[Problem]:
    """A multi-task section's method list (known, not repeated; ``methods`` not empty) and
    its ``params`` (known methods, and parameters each method has), named before any work:
    the methods' own checks would only run after the suite is trained."""
    out: list[Problem] = []
    unknown = [m for m in methods if m not in MULTITASK_METHODS]
    if unknown:
        allowed = ", ".join(MULTITASK_METHODS)
        out.append(((name,), f"{', '.join(unknown)} unknown (allowed: {allowed})"))
    if name == "methods" and not methods:
        out.append(((name,), "empty; give at least one method"))
    out += _repeats(name, methods)
    if params is None:
        return out
    stray = [m for m in params if m not in MULTITASK_METHODS]
    if stray:
        out.append((("params",), f"{', '.join(stray)}: no such method"))
    return out + _unknown_params(params)


def _unknown_params(params: dict[str, dict[str, Any]]) -> list[Problem]:
    """Merge parameters a method does not have, named per method."""
    from mergelab.methods import REGISTRY

    out: list[Problem] = []
    for method, given in params.items():
        cls = REGISTRY.get(method)
        if cls is None or not isinstance(given, dict):
            continue
        known = {f.alias or k for k, f in cls.Params.model_fields.items()}
        known |= set(cls.Params.model_fields) | set(cls.PerModel.model_fields)
        bad = sorted(k for k in given if k not in known)
        if bad:
            out.append(
                (
                    ("params", method),
                    f"{', '.join(bad)}: no such parameter of {method} (allowed: "
                    f"{', '.join(sorted(known))})",
                )
            )
    return out


def _fmt(value: Any) -> str:
    return f"[{', '.join(map(str, value))}]" if isinstance(value, list | tuple) else str(value)


class _Strict(BaseModel):
    """A frozen config section that rejects unknown keys and checks its own values.

    ``_problems`` lists what is wrong with an otherwise well-typed section, each with the
    field it concerns, so ``yamlfile.validate`` names the field
    (``magnitude.factors: -5 ...``) instead of the section.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def _problems(self) -> list[Problem]:
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _check_values(cls, data: Any, handler: Any) -> Any:
        self = handler(data)
        problems = self._problems()
        if problems:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("study_config", "{message}", {"message": msg}),
                        loc=loc,
                        input=_input(self, loc),
                    )
                    for loc, msg in problems
                ],
            )
        return self


def _input(model: BaseModel, loc: tuple[str | int, ...]) -> Any:
    """The value at ``loc`` in ``model`` (for the error's ``input``), or None."""
    value: Any = model
    for part in loc:
        if isinstance(value, BaseModel):
            value = getattr(value, str(part), None)
        elif isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list | tuple) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return None
    return value


class IndependentSpec(_Strict):
    """Independently initialised ingredients, the contrast to fine-tunes of one start."""

    archs: list[str] = []
    datasets: list[str] | None = None  # None: every dataset of the study
    train: dict[str, Any] = {}
    """Training of each independent model (TrainSettings fields, over ``training.train``):
    from scratch, so usually longer."""

    def _problems(self) -> list[Problem]:
        out = _repeats("archs", self.archs)
        if self.datasets is not None:
            if not self.datasets:
                out.append(
                    (("datasets",), "give null (every dataset of the study) or at least one")
                )
            out += _repeats("datasets", self.datasets)
        return out


class TemplatesSpec(_Strict):
    enabled: bool = True
    arch: str = "linear"
    """A built-in whose head is a Linear on the flattened image (its rows are templates)."""
    kernels_arch: str | None = "cnn"
    """Arch whose first conv layer's kernels are drawn (None: none)."""


class CrossTaskSpec(_Strict):
    """Model A of task A and model B of task B, fine-tuned from one start (A's)."""

    pairs: list[tuple[str, str]] = []
    arch: str = "mlp"
    channels: Literal[1, 3] = 1
    img_size: int = Field(28, ge=1, le=MAX_SIDE)

    def _problems(self) -> list[Problem]:
        out: list[Problem] = [
            (("pairs", i), f"{a} is paired with itself; a pair is two different datasets")
            for i, (a, b) in enumerate(self.pairs)
            if a == b
        ]
        return out + _repeats("pairs", [_fmt(p) for p in self.pairs])


class MagnitudeSpec(_Strict):
    enabled: bool = True
    factors: list[float] = list(PAPER_FACTORS)
    scaled: list[Literal["all", "first", "all_but_first"]] = ["all", "first", "all_but_first"]
    tensors: list[Literal["all", "weights", "no_norm_stats"]] = ["all"]
    bn: list[Literal["running", "running_c2", "batch"]] = list(BN_MODES)
    """How BatchNorm is evaluated on scaled models (models without BatchNorm: once)."""
    n_models: list[int] = [2, 3, 5, 7, 10]
    targets: list[tuple[str, str]] = []
    """(dataset, arch) pairs to sweep; empty: every pair of the study."""
    greedy: bool = True
    """Greedy soup and greedy ensembles at every factor (each needs val passes)."""
    batch_factors: list[float] = list(BATCH_FACTORS)
    """Factors whose per-batch scatter is kept: some of ``factors`` (default: those of
    1, 50 and 150 that are in ``factors``)."""
    batch_size: int = Field(100, ge=2)
    """Samples per class-mixed batch: the per-batch scatter and 'batch' BatchNorm mode."""

    @model_validator(mode="before")
    @classmethod
    def _default_batch_factors(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch_factors" not in data:
            factors = data.get("factors", PAPER_FACTORS)
            if isinstance(factors, list | tuple):
                data = {**data, "batch_factors": [f for f in BATCH_FACTORS if f in factors]}
        return data

    def _problems(self) -> list[Problem]:
        out: list[Problem] = []
        if not self.factors:
            out.append((("factors",), "empty; give at least one factor"))
        bad = [f for f in self.factors if not (math.isfinite(f) and f > 0)]
        if bad:
            out.append((("factors",), f"{_values(bad)} refused (allowed: finite numbers > 0)"))
        out += _repeats("factors", self.factors)
        for name in ("scaled", "tensors", "bn"):
            if not getattr(self, name):
                out.append(((name,), "empty; give at least one"))
            out += _repeats(name, getattr(self, name))
        out += _repeats("n_models", self.n_models)  # their range: StudyConfig (n_models)
        stray = [f for f in self.batch_factors if f not in self.factors]
        if stray:
            out.append(
                (
                    ("batch_factors",),
                    f"{_values(stray)} not among factors ({_values(self.factors)}); "
                    "per-batch results exist only for swept factors",
                )
            )
        out += _repeats("batch_factors", self.batch_factors)
        return out + _repeats("targets", [_fmt(t) for t in self.targets])


MULTITASK_METHODS = ("linear", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "cart")
"""Merge methods the multi-task study knows (with their coefficient: ``lambda`` or ``alpha``;
``linear`` has none)."""
MULTITASK_COEFFICIENTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
MULTITASK_RANKS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def _fractions(name: str, values: Iterable[float]) -> list[Problem]:
    bad = [v for v in values if not (math.isfinite(v) and 0 < v <= 1)]
    if bad:
        return [((name,), f"{_values(bad)} refused (allowed: fractions in (0, 1])")]
    return []


class MultitaskSpec(_Strict):
    """The multi-task merging study: one pre-trained backbone fine-tuned per task (frozen
    heads), the task backbones merged by each method; coefficients chosen on val.

    The suite is trained (``pretrain``, ``finetune``), or is the user's: ``pretrained``
    and one full checkpoint per task (``checkpoints``), read and split into backbone and
    head, nothing trained (``mergelab.train.user_suite``)."""

    enabled: bool = False
    tasks: list[str] | None = None
    """Task dataset specs (None: every task of ``mergelab.data.multitask``); with
    ``checkpoints``, each task's val and test data, in the checkpoints' order."""
    arch: str = "cnn"
    """The model of every task; with ``checkpoints``, the arch they were made with."""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seed of the trained suite (inits, heads, data order), of DARE's masks and of the
    task-count subsets."""
    seeds: list[int] | None = None
    """Several training seeds: one suite (pre-training and fine-tunes) per seed, the
    replicates the claims resample (None: ``[seed]``). The task-count subsets stay fixed
    by ``seed``. Not with ``checkpoints``."""
    pretrain: dict[str, Any] = {}
    """Pre-training settings (TrainSettings fields over the multi-task defaults)."""
    finetune: dict[str, Any] = {}
    """Fine-tuning settings, the same for every task."""
    pretrained: str | None = None
    """The user's pre-trained checkpoint, the start of every task's fine-tune (its head,
    if any, is not used); only with ``checkpoints``."""
    checkpoints: list[str] | None = None
    """The user's fine-tuned models, one full model (backbone and head) per task, in the
    order of ``tasks`` (None: the suite is trained). Paths as every path of the config:
    relative to the working directory."""
    in_chans: Literal[1, 3] | None = None
    """Input channels of every model (None: read from the checkpoints; a trained suite: 1)."""
    img_size: int | None = Field(None, ge=1, le=MAX_SIDE)
    """Image side of every model (None: read from the checkpoints where their shapes fix
    it, else the tasks' image size; a trained suite: 28)."""
    methods: list[str] = list(MULTITASK_METHODS)
    coefficients: list[float] = list(MULTITASK_COEFFICIENTS)
    """Grid of ``lambda`` / ``alpha`` values; the best mean val accuracy is chosen."""
    extend_grid: int = Field(2, ge=0, le=10)
    """When the best value is the grid's largest (smallest), try it doubled (halved), up to
    this many times, while mean val accuracy improves (0: the grid only)."""
    params: dict[str, dict[str, Any]] = {}
    """Extra merge parameters per method (e.g. ``{cart: {conv: true}}``)."""
    ties_density: float = 0.2
    dare_density: float = 0.1
    cart_rank: float = 0.1
    """CART's rank fraction in the method comparison."""
    ranks: list[float] = list(MULTITASK_RANKS)
    """CART rank fractions swept (empty: no sweep)."""
    task_counts: list[int] | None = None
    """Numbers of tasks merged in the task-count sweep (None: 2 .. all; []: no sweep); a
    fixed seeded subset of the tasks per count."""
    count_methods: list[str] = ["linear", "task_arithmetic", "ties", "cart"]

    def _problems(self) -> list[Problem]:
        out: list[Problem] = []
        if self.tasks is not None:
            if len(self.tasks) < 2:
                out.append((("tasks",), "give null (every task) or at least two tasks"))
            out += _repeats("tasks", self.tasks)
        out += self._checkpoint_problems()
        if self.seeds is not None:
            if not self.seeds:
                out.append((("seeds",), "empty; give null (one seed: seed) or seeds"))
            bad_seeds = [x for x in self.seeds if not 0 <= x <= MAX_SEED]
            if bad_seeds:
                out.append((("seeds",), f"{_values(bad_seeds)} outside [0, {MAX_SEED}]"))
            out += _repeats("seeds", self.seeds)
            if self.checkpoints is not None and len(self.seeds) > 1:
                out.append(
                    (
                        ("seeds",),
                        "several seeds with checkpoints: the suite is your checkpoints, "
                        "trained once (allowed: one seed, or drop checkpoints)",
                    )
                )
        out += _method_problems("methods", self.methods, self.params)
        out += _method_problems("count_methods", self.count_methods)
        if not self.coefficients:
            out.append((("coefficients",), "empty; give at least one coefficient"))
        bad = [c for c in self.coefficients if not (math.isfinite(c) and c > 0)]
        if bad:
            out.append((("coefficients",), f"{_values(bad)} refused (allowed: numbers > 0)"))
        out += _repeats("coefficients", self.coefficients)
        for name in ("ties_density", "dare_density", "cart_rank"):
            out += _fractions(name, [getattr(self, name)])
        out += _fractions("ranks", self.ranks) + _repeats("ranks", self.ranks)
        if self.task_counts is not None:
            n = len(self.tasks) if self.tasks is not None else None
            bad_n = [k for k in self.task_counts if k < 2 or (n is not None and k > n)]
            if bad_n:
                top = n if n is not None else "the number of tasks"
                out.append((("task_counts",), f"{_values(bad_n)} outside [2, {top}]"))
            out += _repeats("task_counts", self.task_counts)
        return out

    @property
    def training_seeds(self) -> list[int]:
        """The seeds of the suites: ``seeds``, else ``[seed]``."""
        return list(self.seeds) if self.seeds else [self.seed]

    def _checkpoint_problems(self) -> list[Problem]:
        """``pretrained`` and ``checkpoints`` go together, one checkpoint per task, and
        exclude the training settings (nothing is trained from checkpoints)."""
        if self.checkpoints is None:
            if self.pretrained is not None:
                return [
                    (
                        ("pretrained",),
                        "given without checkpoints; give checkpoints (one fine-tuned model "
                        "per task), or drop pretrained to train the suite",
                    )
                ]
            return []
        out: list[Problem] = []
        if not self.pretrained:
            out.append(
                (
                    ("pretrained",),
                    "missing; checkpoints need the pre-trained checkpoint they were "
                    "fine-tuned from (task vectors are taken from it)",
                )
            )
        out += [(("checkpoints", i), "empty path") for i, p in enumerate(self.checkpoints) if not p]
        if self.tasks is None:
            out.append(
                (
                    ("tasks",),
                    "null, but checkpoints are given; give each checkpoint's task dataset "
                    "spec, in the same order",
                )
            )
        elif len(self.checkpoints) != len(self.tasks):
            out.append(
                (
                    ("checkpoints",),
                    f"{len(self.checkpoints)} checkpoints for {len(self.tasks)} tasks "
                    "(allowed: one per task, in the order of tasks)",
                )
            )
        for name in ("pretrain", "finetune"):
            if getattr(self, name):
                out.append(
                    (
                        (name,),
                        "a training setting, but nothing is trained from checkpoints "
                        "(allowed: drop it, or drop checkpoints to train the suite)",
                    )
                )
        return out


MERGEABILITY_METHODS = ("linear", "task_arithmetic", "tsv", "ties", "dare")
MERGEABILITY_PARAMS: dict[str, dict[str, Any]] = {
    "task_arithmetic": {"lambda": 0.3},
    "ties": {"lambda": 0.3},
    "dare": {"lambda": 0.3},
    "tsv": {"alpha": 1.0},
}


class MergeabilitySpec(_Strict):
    """The mergeability study ("Demystifying Mergeability"): every pair of the tasks of the
    ``multitask:`` suite (trained, or the user's checkpoints), merged by each method at the
    paper's fixed settings (no coefficient chosen), its pairwise metrics measured, and one
    sparse linear model per method predicting post-merge normalized accuracy from them.

    Defaults are the paper's: weight averaging, task arithmetic 0.3, TSV-M, TIES 20 % with
    0.3, DARE p = 0.9 (density 0.1; rescaled task vectors added with 0.3, as task
    arithmetic)."""

    enabled: bool = False
    methods: list[str] = list(MERGEABILITY_METHODS)
    params: dict[str, dict[str, Any]] = copy.deepcopy(MERGEABILITY_PARAMS)
    """Merge parameters per method (replacing the defaults of that method)."""
    ties_density: float = 0.2
    dare_density: float = 0.1
    samples: int = Field(256, ge=8, le=100_000)
    """Samples per task for the data metrics (activations, gradients, loss barrier)."""
    features: list[str] | None = None
    """The metrics the predictors use (None: the paper's 28; ``mergelab diagnose --json``
    lists every name)."""
    l1: float = Field(0.05, gt=0, le=10)
    """L1 weight of the sparse -Pearson model (unit-norm coefficients)."""

    def _problems(self) -> list[Problem]:
        out: list[Problem] = []
        out += _method_problems("methods", self.methods, self.params)
        for name in ("ties_density", "dare_density"):
            out += _fractions(name, [getattr(self, name)])
        if self.features is not None:
            from mergelab.diagnose import METRIC_NAMES as names

            bad = [f for f in self.features if f not in names]
            if bad:
                out.append(
                    (
                        ("features",),
                        f"{', '.join(bad)} unknown (allowed: {', '.join(names)})",
                    )
                )
            if len(self.features) < 2:
                out.append((("features",), "give at least two metrics"))
            out += _repeats("features", self.features)
        return out


class StudyConfig(_Strict):
    """What ``mergelab study`` runs.

    ``training`` holds the ingredient recipe fields (``source``, ``pretrain``, ``train``,
    ``head``, ``init``, ``lrs``, ``augment``: see ``mergelab.train.IngredientRecipe``) for
    every run; ``dataset_training`` and then ``arch_training`` override them per dataset
    and per arch (merged key by key, sections like ``pretrain`` field by field).
    ``seeds``: every ingredient set is trained once per seed (replicates; claims resample
    them); ``split_seed`` fixes the train/val/test split of every dataset.
    """

    name: str = "study"
    """Names the default output folder (``mergelab-study-NAME``)."""
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    seeds: list[int] = [0]
    datasets: list[str] = []
    archs: list[str] = []
    n_models: int = Field(10, le=MAX_MODELS)
    """Ingredients per setting (the most any soup averages)."""
    model_counts: list[int] = list(MODEL_COUNTS)
    """Model counts N of the weights-vs-features comparison (the first N ingredients),
    each in [2, n_models]; default: those of 2, 3, 5, 7, 10 up to ``n_models``."""
    batch_size: int = Field(256, ge=1)
    device: str | None = None
    training: dict[str, Any] = {}
    dataset_training: dict[str, dict[str, Any]] = {}
    arch_training: dict[str, dict[str, Any]] = {}
    independent: IndependentSpec = IndependentSpec()
    templates: TemplatesSpec = TemplatesSpec()
    cross_task: CrossTaskSpec = CrossTaskSpec()
    magnitude: MagnitudeSpec = MagnitudeSpec()
    weight_stats: bool = True
    multitask: MultitaskSpec = MultitaskSpec()
    mergeability: MergeabilitySpec = MergeabilitySpec()
    gpu_tflops: float = Field(60.0, gt=0)
    """Sustained training throughput assumed by ``--dry-run``'s GPU-hour estimate (dense
    FP16/BF16 TFLOP/s actually achieved, well below a data sheet's peak)."""
    _path: Path | None = PrivateAttr(None)

    @property
    def path(self) -> Path | None:
        """The YAML file this config was read from (None: built in Python); errors name it."""
        return self._path

    def __eq__(self, other: object) -> bool:
        """Equal configs run the same study, wherever they were read from."""
        if not isinstance(other, StudyConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # lists inside: never hashable

    @model_validator(mode="before")
    @classmethod
    def _default_counts(cls, data: Any) -> Any:
        """Default model counts (here and in ``magnitude``) up to ``n_models``."""
        if not isinstance(data, dict):
            return data
        n = data.get("n_models", 10)
        if not isinstance(n, int) or isinstance(n, bool):
            return data
        counts = [k for k in MODEL_COUNTS if k <= n]
        data = dict(data)
        data.setdefault("model_counts", counts)
        magnitude = data.get("magnitude", {})
        if isinstance(magnitude, dict) and "n_models" not in magnitude:
            data["magnitude"] = {**magnitude, "n_models": counts}
        elif isinstance(magnitude, MagnitudeSpec) and "n_models" not in magnitude.model_fields_set:
            data["magnitude"] = magnitude.model_copy(update={"n_models": counts})
        return data

    def _problems(self) -> list[Problem]:
        out: list[Problem] = []
        if not _NAME.fullmatch(self.name) or ".." in self.name:
            out.append(
                (
                    ("name",),
                    f"{self.name!r} is no plain folder name; it names the output folder "
                    "mergelab-study-NAME (allowed: 1 to 100 letters, digits, '_', '-' and "
                    "'.', starting with a letter or digit, no '..')",
                )
            )
        for name in ("datasets", "archs", "seeds"):
            if name != "seeds" and self.suite_only and not getattr(self, name):
                continue  # a multi-task / mergeability study alone: no ingredient sets
            if not getattr(self, name):
                out.append(((name,), f"empty; give at least one {name[:-1]}"))
            out += _repeats(name, getattr(self, name))
        if self.n_models < 2:
            out.append((("n_models",), f"{self.n_models}: a soup averages at least 2 models"))
        tasks = self.multitask.tasks
        if self.mergeability.enabled and tasks is not None and len(tasks) < 4:
            out.append(
                (
                    ("multitask", "tasks"),
                    f"{len(tasks)} tasks; the mergeability study needs at least 4 (each "
                    "leave-one-task-out fold trains on the pairs of the others)",
                )
            )
        negative = [s for s in self.seeds if s < 0]
        if negative:
            out.append((("seeds",), f"{_values(negative)}: seeds are numbers >= 0"))
        out += self._counts_problems(("model_counts",), self.model_counts)
        if self.magnitude.enabled:
            out += self._counts_problems(("magnitude", "n_models"), self.magnitude.n_models)
        return out

    def _counts_problems(self, loc: tuple[str, ...], counts: list[int]) -> list[Problem]:
        if not counts:
            return [(loc, f"empty; give at least one count in [2, n_models = {self.n_models}]")]
        bad = [n for n in counts if not 2 <= n <= self.n_models]
        if not bad or self.n_models < 2:
            return []
        return [
            (
                loc,
                f"{_values(bad)} outside [2, n_models = {self.n_models}]: a soup averages at "
                f"least 2 of the {self.n_models} ingredients",
            )
        ]

    @property
    def suite_only(self) -> bool:
        """Only the studies of the multi-task suite run (no ingredient sets needed)."""
        return self.multitask.enabled or self.mergeability.enabled

    def counts(self) -> list[int]:
        """Model counts of the weights-vs-features comparison (each in [2, n_models])."""
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

    def magnitude_targets(self) -> list[tuple[str, str]]:
        spec = self.magnitude
        return list(spec.targets) or [(d, a) for d in self.datasets for a in self.archs]


PRESETS = ("quick", "paper", "tiny", "multitask-quick", "mergeability")


def preset_path(name: str) -> Path:
    return Path(str(resources.files("mergelab.presets").joinpath(f"{name}.yaml")))


def load_config(source: str | Path | None) -> tuple[StudyConfig, str]:
    """A preset name (``quick``, ``paper``, ``tiny``) or a YAML path -> (config, its text)."""
    source = "quick" if source is None else source
    path = preset_path(str(source)) if str(source) in PRESETS else Path(source)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such study config (allowed: a YAML file, or a preset: "
            f"{', '.join(PRESETS)})"
        )
    data = read_mapping(path, "study config", ConfigError)
    config = validate(StudyConfig, data, path, "study config", ConfigError)
    config._path = path
    return config, path.read_text()
