"""What ``mergelab study`` would do, before it does it: ``mergelab study CONFIG --dry-run``.

:func:`plan_study` counts, from the config alone, every training run the studies need
(deduplicated by config hash, as the run cache is), its optimizer steps, the forward
passes the studies make over val and test, and what all of that costs in FLOPs and GPU
hours. It loads no on-disk dataset, trains nothing and writes nothing: dataset sizes of
the sets the paper uses come from a table of their published sizes (the output says
which sizes are assumed), the embedded sets (``mnist5k``, ``digits``) are loaded because
that is cheap, and FLOPs come from :func:`mergelab.models.count_flops` on models built
without weights (on PyTorch's ``meta`` device where the model allows it).

The estimate is an upper bound where the study's work depends on results: early stopping
(``patience``) may end a run sooner, and a greedy soup usually tries fewer candidates than
the worst case counted here. Evaluation passes are split-passes: one model (or soup)
over one split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mergelab.errors import MergeError
from mergelab.studies.config import StudyConfig
from mergelab.studies.registry import STUDIES

__all__ = ["DatasetFacts", "StudyPlan", "Tally", "dataset_facts", "plan_study"]

# Share of train carved off as val by the loaders of datasets that have no val split
# (cifar.py, imagefolder.py, chestxray.py: ``val_fraction=0.1``).
_VAL_FRACTION = 0.1


# Train splits whose float32 copy in memory is worth a warning in the plan (bytes).

# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetFacts:
    """Sizes and shapes of one dataset spec, as the study would load it."""

    spec: str
    label: str
    train: int
    val: int
    test: int
    num_classes: int
    channels: int
    image_size: tuple[int, int]  # (H, W)
    multilabel: bool
    origin: str
    """How these facts were obtained: ``assumed: ...`` (published sizes, not checked
    against the files) or ``loaded: ...``."""

    def size(self, split: str) -> int:
        try:
            return {"train": self.train, "val": self.val, "test": self.test}[split]
        except KeyError:
            raise MergeError(f"{self.spec}: unknown split {split!r}") from None


def _carve(n: int, fraction: float = _VAL_FRACTION) -> tuple[int, int]:
    """(kept, carved) sizes of the loaders' ``carve_split`` (exact for stratified splits of
    classes whose sizes are multiples of 10, within a few items otherwise)."""
    from mergelab.data.splits import split_counts

    kept, carved = split_counts(n, (1.0 - fraction, fraction))
    return kept, carved


def _cifar(classes: int) -> dict[str, Any]:
    train, val = _carve(50_000)
    return {
        "train": train,
        "val": val,
        "test": 10_000,
        "num_classes": classes,
        "channels": 3,
        "image_size": (32, 32),
        "multilabel": False,
        "why": f"CIFAR-{classes}: 50,000 train (10% carved off as val), 10,000 test, 32 px",
    }


def _known(name: str, rest: str | None) -> dict[str, Any] | None:
    """Published facts of the on-disk datasets the paper uses, or None."""
    if name == "cifar10":
        return _cifar(10)
    if name == "cifar100":
        return _cifar(100)
    if name == "tinyimagenet":
        train, val = _carve(100_000)
        return {
            "train": train,
            "val": val,
            "test": 10_000,
            "num_classes": 200,
            "channels": 3,
            "image_size": (64, 64),
            "multilabel": False,
            "why": "Tiny ImageNet: 100,000 train (10% carved off as val), its labelled "
            "10,000 val images as test, 64 px",
        }
    flavour = name
    if name == "medmnist" and rest:
        flavour = Path(rest).stem.lower().split("_")[0]
    if flavour in ("pathmnist", "dermamnist"):
        side = 28
        match = re.search(r"_(\d+)$", Path(rest or "").stem)
        if match:
            side = int(match.group(1))  # MedMNIST+ files: pathmnist_224.npz
        sizes = {"pathmnist": (89_996, 10_004, 7_180, 9), "dermamnist": (7_007, 1_003, 2_005, 7)}
        train, val, test, classes = sizes[flavour]
        return {
            "train": train,
            "val": val,
            "test": test,
            "num_classes": classes,
            "channels": 3,
            "image_size": (side, side),
            "multilabel": False,
            "why": f"{flavour}: the official {train:,} / {val:,} / {test:,} split, {side} px",
        }
    if name == "celeba":
        attribute = "Smiling"
        if rest:
            head, sep, tail = rest.rpartition(":")
            if sep and head and "/" not in tail and "\\" not in tail:
                attribute = tail
        every = attribute == "all"
        return {
            "train": 162_770,
            "val": 19_867,
            "test": 19_962,
            "num_classes": 40 if every else 2,
            "channels": 3,
            "image_size": (218, 178),
            "multilabel": every,
            "why": "CelebA: the official 162,770 / 19,867 / 19,962 partition, 178x218 images, "
            + ("40 attributes (multi-label)" if every else f"attribute {attribute} (2 classes)"),
        }
    if name == "chestxray14":
        train, val = _carve(86_524)
        return {
            "train": train,
            "val": val,
            "test": 25_596,
            "num_classes": 14,
            "channels": 1,
            "image_size": (224, 224),
            "multilabel": True,
            "why": "ChestX-ray14: 86,524 train_val (about 10% carved off as val, by patient), "
            "25,596 test, 14 labels, grey; images assumed stored resized to 224 px (the "
            "loader takes the files' size: 1024 px for the original PNGs)",
        }
    return None


def _label(spec: str) -> str:
    from mergelab.data.registry import parse_spec

    name, rest = parse_spec(spec)
    if name == "celeba" and rest:
        head, sep, tail = rest.rpartition(":")
        if sep and head and "/" not in tail:
            return f"celeba:{tail}"
    if name == "medmnist" and rest:
        return Path(rest).stem.lower()
    if name in ("pathmnist", "dermamnist") and rest and re.search(r"_\d+$", Path(rest).stem):
        return Path(rest).stem.lower()
    return name


def dataset_facts(spec: str, *, split_seed: int = 0) -> DatasetFacts:
    """Facts of one dataset spec without reading on-disk data: published sizes for the
    paper's datasets, the embedded sets loaded, any other set loaded only if its files are
    there (else a ``MergeError`` naming the spec). A class subset ``NAME[...]`` of a table
    set scales its sizes by ``k / num_classes`` (as if classes were balanced)."""
    from mergelab.data import registry as data_registry
    from mergelab.data import subset as data_subset
    from mergelab.data.errors import DatasetError

    def failed(exc: DatasetError) -> MergeError:
        msg = str(exc)  # subset errors already name the spec
        return MergeError(
            msg if msg.startswith(f"dataset {spec!r}") else f"dataset {spec!r}: {msg}"
        )

    try:
        base_spec, subset = data_subset.split_subset(spec)
        classes = data_subset.parse_classes(subset, spec=spec) if subset is not None else None
        name, rest = data_registry.parse_spec(base_spec)
    except DatasetError as exc:
        raise failed(exc) from None
    entry = data_registry.DATASETS.get(name)
    if entry is None:
        known = ", ".join(data_registry.known_datasets())
        raise MergeError(f"dataset {spec!r}: unknown name {name!r}; known: {known}")
    label = _label(base_spec)
    if classes is not None:
        label = f"{label}[{data_subset.format_classes(classes)}]"
    known_facts = _known(name, rest)
    if known_facts is not None:
        why = known_facts.pop("why")
        if classes is not None:
            total = known_facts["num_classes"]
            try:
                data_subset.check_classes(
                    classes,
                    name=name,
                    num_classes=total,
                    multilabel=known_facts["multilabel"],
                    spec=spec,
                )
            except DatasetError as exc:
                raise failed(exc) from None
            k = len(classes)
            for split in ("train", "val", "test"):
                known_facts[split] = round(known_facts[split] * k / total)
            known_facts["num_classes"] = k
            why += f"; class subset of {k} of {total} classes: sizes scaled by {k}/{total}"
        return DatasetFacts(spec=spec, label=label, origin=f"assumed: {why}", **known_facts)
    where = "embedded" if not entry.needs_path else "read from disk"
    if entry.needs_path and (rest is None or not Path(rest).expanduser().exists()):
        raise MergeError(
            f"dataset {spec!r}: its sizes are not in the dry run's table and its files are "
            f"not there ({rest or 'no path'}); the table knows cifar10, cifar100, "
            "tinyimagenet, pathmnist, dermamnist, celeba and chestxray14"
        )
    try:
        splits = data_registry.load_dataset(spec, seed=split_seed)
    except DatasetError as exc:
        raise failed(exc) from None
    info = splits.info
    return DatasetFacts(
        spec=spec,
        label=label,
        train=splits.size("train"),
        val=splits.size("val"),
        test=splits.size("test"),
        num_classes=info.num_classes,
        channels=info.channels,
        image_size=tuple(info.image_size),
        multilabel=info.multilabel,
        origin=f"loaded: {where}",
    )


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelFacts:
    flops: int  # one forward pass of one image (0 when it cannot run, see ``problem``)
    params: int
    has_bn: bool
    input_shape: tuple[int, int, int]
    problem: str = ""
    """Why the model cannot run on this input (the study would fail there), or ''."""


def _drop_batchnorm(model: Any) -> None:
    """Replace every BatchNorm by an identity (same shapes; counted FLOPs unchanged, as
    ``count_flops`` counts matmuls, convolutions and attention only)."""
    from torch import nn

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, nn.Identity())


@functools.lru_cache(maxsize=512)
def _model_facts(
    arch: str, kwargs_json: str, num_classes: int, shape: tuple[int, int, int], size: int
) -> ModelFacts:
    """Built without weights (``meta`` device when possible) and counted on ``shape``."""
    import torch
    from torch import nn

    from mergelab.models import build_model, count_flops, count_params

    kwargs = json.loads(kwargs_json)

    def build(device: str) -> nn.Module:
        with torch.device(device):
            return build_model(arch, num_classes, in_chans=shape[0], img_size=size, **kwargs)

    try:
        model = build("meta")
    except (ValueError, TypeError, KeyError) as exc:
        raise MergeError(f"arch {arch!r}: cannot build it ({exc})") from None
    except Exception:  # a model that cannot live on meta: build it for real
        model = build("cpu")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    params = count_params(model)
    if has_bn:
        _drop_batchnorm(model)  # FLOP counters skip normalisation; on meta it is slow
    try:
        flops = count_flops(model, shape)
    except Exception as exc:  # an input the model rejects, or a meta limit
        meta_limit = isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()
        try:
            if not meta_limit:
                raise
            flops = count_flops(build("cpu"), shape)
        except Exception:  # the model cannot take this input
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return ModelFacts(0, params, has_bn, shape, problem=problem)
    return ModelFacts(flops, params, has_bn, shape)


def model_facts(
    arch: str,
    facts: DatasetFacts,
    *,
    in_chans: int | None = None,
    img_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ModelFacts:
    """FLOPs of ``arch`` on ``facts``'s images as the trainer and evaluator feed them: the
    native size, or resized to a square ``img_size`` when ``in_chans``/``img_size`` is set."""
    if in_chans is None and img_size is None:
        h, w = facts.image_size
        shape = (facts.channels, h, w)
        size = h
    else:
        size = img_size if img_size is not None else facts.image_size[0]
        shape = (in_chans if in_chans is not None else facts.channels, size, size)
    kwargs = json.dumps(model_kwargs or {}, sort_keys=True)
    return _model_facts(arch, kwargs, facts.num_classes, shape, size)


# ----------------------------------------------------------------------------- tallies


@dataclass
class Tally:
    """Work of one part of the study."""

    runs: int = 0
    """Training runs counted here (each unique run once, in the first study that needs it)."""
    reads: int = 0
    """Training runs this part uses (including runs another study trains)."""
    steps: int = 0
    steps_upper_bound: bool = False
    """True when some run has ``patience``: ``steps`` is then the most it may take."""
    train_images: int = 0
    train_flops: float = 0.0
    val_passes: int = 0
    test_passes: int = 0
    eval_images: int = 0
    eval_flops: float = 0.0

    @property
    def passes(self) -> int:
        return self.val_passes + self.test_passes

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops

    def gpu_hours(self, tflops: float) -> float:
        return self.flops / (tflops * 1e12) / 3600.0

    def add(self, other: Tally) -> None:
        for name in (
            "runs",
            "reads",
            "steps",
            "train_images",
            "train_flops",
            "val_passes",
            "test_passes",
            "eval_images",
            "eval_flops",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.steps_upper_bound = self.steps_upper_bound or other.steps_upper_bound


def _fmt_int(n: int | float) -> str:
    return f"{round(n):,}"


def _fmt_hours(h: float) -> str:
    if h == 0:
        return "0"
    if h >= 10:
        return f"{h:,.1f}"
    return f"{h:.3g}" if h >= 1e-3 else f"{h:.1e}"


def _fmt_gflops(flops: int) -> str:
    g = flops / 1e9
    return f"{g:.3g}" if g >= 1e-3 else f"{g:.1e}"


def _table(header: list[str], rows: list[list[str]], right: Iterable[int]) -> list[str]:
    right = set(right)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(header), *(line(r) for r in rows)]


# ----------------------------------------------------------------------------- the plan


@dataclass
class StudyPlan:
    """The work of one study config: per study, per (dataset, arch, input), in total."""

    name: str
    gpu_tflops: float
    datasets: dict[str, DatasetFacts]
    studies: dict[str, Tally]
    settings: dict[tuple[str, str, str], Tally]
    gflops: dict[tuple[str, str, str], int]
    recipes: int
    total: Tally
    notes: list[str] = field(default_factory=list)
    problems: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(dataset, arch, input) settings whose model cannot take that input: the study
    would fail there (their FLOPs count as 0)."""
    train_memory: dict[tuple[str, str], int] = field(default_factory=dict)
    """Bytes of each (dataset, input) train split held in memory as float32 by training."""

    @property
    def gpu_hours(self) -> float:
        return self.total.gpu_hours(self.gpu_tflops)

    def to_dict(self) -> dict[str, Any]:
        def tally(t: Tally) -> dict[str, Any]:
            return {
                **asdict(t),
                "passes": t.passes,
                "flops": t.flops,
                "gpu_hours": t.gpu_hours(self.gpu_tflops),
            }

        return {
            "name": self.name,
            "gpu_tflops": self.gpu_tflops,
            "recipes": self.recipes,
            "datasets": {
                spec: {**asdict(f), "image_size": list(f.image_size)}
                for spec, f in self.datasets.items()
            },
            "studies": {name: tally(t) for name, t in self.studies.items()},
            "settings": [
                {
                    "dataset": d,
                    "arch": a,
                    "input": shape,
                    "forward_flops": self.gflops[(d, a, shape)],
                    "problem": self.problems.get((d, a, shape), ""),
                    **tally(t),
                }
                for (d, a, shape), t in self.settings.items()
            ],
            "total": tally(self.total),
            "train_memory_bytes": [
                {"dataset": d, "input": shape, "bytes": b}
                for (d, shape), b in self.train_memory.items()
            ],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render(self) -> str:
        tf = self.gpu_tflops
        out = [
            f"mergelab study {self.name!r}: dry run (no data read from disk, nothing trained "
            "or written)",
            f"GPU hours assume {tf:g} TFLOP/s sustained (config gpu_tflops); training costs "
            "3 forward passes per image.",
            "",
            "Datasets (train / val / test items; * sizes assumed, not read from the files)",
        ]
        rows = []
        for f in self.datasets.values():
            mark = "*" if f.origin.startswith("assumed") else " "
            kind = f"{f.num_classes} {'labels' if f.multilabel else 'classes'}"
            shape = f"{f.channels}x{f.image_size[0]}x{f.image_size[1]}"
            sizes = f"{f.train:,} / {f.val:,} / {f.test:,}"
            rows.append([mark + f.label, sizes, kind, shape, f.origin])
        out += _table(["dataset", "train / val / test", "targets", "image", "source"], rows, [])
        out += ["", "Per study (a run shared by studies is counted in the first that needs it)"]
        rows = []
        for name, t in self.studies.items():
            rows.append(
                [
                    name,
                    _fmt_int(t.runs),
                    _fmt_int(t.reads),
                    ("<=" if t.steps_upper_bound else "") + _fmt_int(t.steps),
                    _fmt_int(t.passes),
                    _fmt_hours(t.gpu_hours(tf)),
                ]
            )
        out += _table(
            ["study", "train runs", "uses runs", "optimizer steps", "eval passes", "GPU h"],
            rows,
            range(1, 6),
        )
        out += ["", "Per dataset and arch (input as the model sees it; GFLOP of one forward pass)"]
        rows = []
        for key, t in self.settings.items():
            d, a, shape = key
            rows.append(
                [
                    d,
                    a,
                    shape,
                    "fails" if key in self.problems else _fmt_gflops(self.gflops[key]),
                    _fmt_int(t.runs),
                    ("<=" if t.steps_upper_bound else "") + _fmt_int(t.steps),
                    _fmt_int(t.passes),
                    _fmt_hours(t.gpu_hours(tf)),
                ]
            )
        out += _table(
            ["dataset", "arch", "input", "GFLOP", "runs", "steps", "passes", "GPU h"],
            rows,
            range(3, 8),
        )
        t = self.total
        upto = "up to " if t.steps_upper_bound else ""
        out += [
            "",
            f"total: {t.runs:,} training runs ({self.recipes} recipes), {upto}{t.steps:,} "
            f"optimizer steps, {t.passes:,} evaluation passes ({t.eval_images:,} images), "
            f"{_fmt_hours(self.gpu_hours)} GPU hours at {tf:g} TFLOP/s "
            f"(training {_fmt_hours(t.gpu_hours(tf) - _eval_hours(t, tf))}, "
            f"evaluation {_fmt_hours(_eval_hours(t, tf))})",
        ]
        if self.problems:
            out += ["", f"Would fail ({len(self.problems)} settings; their FLOPs count as 0):"]
            out += [
                f"  - {a} on {d} ({shape}): {why}" for (d, a, shape), why in self.problems.items()
            ]
        from mergelab.train.trainer import MEMORY_LIMIT_BYTES

        big = {k: b for k, b in self.train_memory.items() if b > MEMORY_LIMIT_BYTES}
        if big:
            out += [
                "",
                "Memory: these train splits exceed $MERGELAB_TRAIN_MEMORY_GB as float32 tensors, "
                "so training reads and adapts them batch by batch (slower) instead of holding "
                "them in memory:",
            ]
            out += [f"  - {d} at {shape}: {b / 1e9:,.1f} GB" for (d, shape), b in big.items()]
        if self.notes:
            out += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        return "\n".join(out)


def _eval_hours(t: Tally, tflops: float) -> float:
    return t.eval_flops / (tflops * 1e12) / 3600.0


def _run_key(config: Any) -> str:
    """The run cache's key (``config_hash``); for an ``init`` file that is not there, the
    same hash over its path text, so the dry run needs no checkpoint on disk."""
    try:
        return config.config_hash()
    except FileNotFoundError:
        from mergelab.train.config import TRAINER_VERSION

        body = config.model_dump(mode="json", exclude={"init"})
        text = json.dumps(
            {"trainer": TRAINER_VERSION, "config": body, "init": f"path:{config.init}"},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _slice_items(n: int, lo: float, hi: float) -> int:
    """Items in ``train_slice`` [lo, hi) of ``n`` (the trainer cuts per class; about this)."""
    return max(0, math.floor(hi * n + 0.5) - math.floor(lo * n + 0.5))


class _Planner:
    def __init__(self, config: StudyConfig) -> None:
        from mergelab.studies.context import StudyContext

        self.config = config
        # A context for building recipes only: its folder is never created.
        out = Path(tempfile.gettempdir()) / "mergelab-dry-run-never-created"
        self.ctx = StudyContext(config, out, progress=False)
        self.datasets: dict[str, DatasetFacts] = {}
        self.studies: dict[str, Tally] = {}
        self.settings: dict[tuple[str, str, str], Tally] = {}
        self.gflops: dict[tuple[str, str, str], int] = {}
        self.notes: list[str] = []
        self.problems: dict[tuple[str, str, str], str] = {}
        self.train_memory: dict[tuple[str, str], int] = {}
        self.seen: set[str] = set()
        self.recipes: set[str] = set()

    # -- helpers -------------------------------------------------------------------------

    def facts(self, spec: str) -> DatasetFacts:
        if spec not in self.datasets:
            facts = dataset_facts(spec, split_seed=self.config.split_seed)
            if any(f.label == facts.label for f in self.datasets.values()):
                facts = replace(facts, label=spec)  # two specs of one dataset: full names
            self.datasets[spec] = facts
        return self.datasets[spec]

    def setting(self, facts: DatasetFacts, arch: str, model: ModelFacts) -> Tally:
        shape = "x".join(str(s) for s in model.input_shape)
        key = (facts.label, arch, shape)
        self.gflops[key] = model.flops
        if model.problem:
            self.problems[key] = model.problem
        return self.settings.setdefault(key, Tally())

    def evaluate(
        self,
        study: str,
        spec: str,
        arch: str,
        *,
        val: int = 0,
        test: int = 0,
        image: tuple[int, int] | None = None,
    ) -> None:
        """``val`` passes over val and ``test`` over test of ``arch`` on ``spec``."""
        facts = self.facts(spec)
        if image is None:  # the input the config gives this arch (as StudyContext.image)
            fields = self.config.training_for(arch, spec)
            image = (fields.get("in_chans"), fields.get("img_size"))
        chans, size = image
        model = model_facts(arch, facts, in_chans=chans, img_size=size)
        images = val * facts.val + test * facts.test
        t = Tally(
            val_passes=val,
            test_passes=test,
            eval_images=images,
            eval_flops=float(images) * model.flops,
        )
        self.studies[study].add(t)
        self.setting(facts, arch, model).add(t)

    # -- training ------------------------------------------------------------------------

    def configs(self, recipe: Any) -> list[Any]:
        """``recipe.all_configs()``, with the target's input filled in from the facts
        table where a start pre-trained on another ``source`` would read the data."""
        other = (
            recipe.mode == "shared"
            and recipe.init is None
            and recipe.source is not None
            and recipe.source != recipe.dataset
        )
        if other and (recipe.in_chans is None or recipe.img_size is None):
            facts = self.facts(recipe.dataset)
            recipe = recipe.model_copy(
                update={
                    "in_chans": recipe.in_chans or facts.channels,
                    "img_size": recipe.img_size or facts.image_size[0],
                }
            )
        return recipe.all_configs()

    def train(self, study: str) -> None:
        tally = self.studies[study]
        try:
            recipes = STUDIES[study].needed_recipes(self.ctx)
        except (ImportError, AttributeError) as exc:
            self.notes.append(f"{study}: its recipes could not be listed ({exc}); not counted")
            return
        except (TypeError, ValueError) as exc:
            raise MergeError(
                f"{study}: the config gives no valid ingredient recipe: {exc}"
            ) from None
        reads: set[str] = set()
        for recipe in recipes:
            self.recipes.add(recipe.model_dump_json())
            for cfg in self.configs(recipe):
                key = _run_key(cfg)
                if key in reads:
                    continue
                reads.add(key)
                if key in self.seen:
                    continue
                self.seen.add(key)
                run = self.run_tally(cfg)
                tally.add(run)
                facts = self.facts(cfg.dataset)
                model = model_facts(
                    cfg.arch,
                    facts,
                    in_chans=cfg.in_chans,
                    img_size=cfg.img_size,
                    model_kwargs=dict(cfg.model_kwargs),
                )
                self.setting(facts, cfg.arch, model).add(run)
                shape = "x".join(str(x) for x in model.input_shape)
                self.train_memory[(facts.label, shape)] = (
                    facts.size(cfg.split) * math.prod(model.input_shape) * 4
                )
        tally.reads += len(reads)

    def run_tally(self, cfg: Any) -> Tally:
        from mergelab.train.trainer import total_steps

        facts = self.facts(cfg.dataset)
        model = model_facts(
            cfg.arch,
            facts,
            in_chans=cfg.in_chans,
            img_size=cfg.img_size,
            model_kwargs=dict(cfg.model_kwargs),
        )
        n = _slice_items(facts.size(cfg.split), *cfg.train_slice)
        steps = total_steps(cfg, n) if n else 0
        batch = min(cfg.batch_size, max(n, 1))
        images = steps * batch
        flops = 3.0 * model.flops * images
        if cfg.patience is not None and steps:
            epochs = math.ceil(steps / max(1, n // batch))
            flops += float(model.flops) * facts.val * epochs  # a val pass per epoch
        return Tally(
            runs=1,
            steps=steps,
            steps_upper_bound=cfg.patience is not None,
            train_images=images,
            train_flops=flops,
        )

    # -- evaluation, study by study -----------------------------------------------------

    def wvf_settings(self) -> list[tuple[str, str, str, int]]:
        from mergelab.studies.weights_vs_features import settings

        return settings(self.ctx)

    def eval_ingredients(self, study: str) -> None:
        """Every ingredient once on val and once on test (outputs are cached on disk by
        content; weights_vs_features reuses them)."""
        for d, a, _, _ in self.wvf_settings():
            self.evaluate(study, d, a, val=self.config.n_models, test=self.config.n_models)

    def eval_wvf(self, study: str, models_too: bool) -> None:
        counts = self.config.counts()
        for d, a, _, _ in self.wvf_settings():
            if models_too:
                top = max(counts, default=0)
                self.evaluate(study, d, a, val=top, test=top)
            for n in counts:
                # Uniform soup on val and test; greedy soup: up to n - 1 candidates on val,
                # the chosen soup on test.
                self.evaluate(study, d, a, val=1 + (n - 1), test=2)

    def eval_magnitude(self, study: str) -> None:
        spec = self.config.magnitude
        if not spec.enabled:
            return
        n_max_cfg = self.config.n_models
        counts = sorted({min(k, n_max_cfg) for k in spec.n_models if k >= 2})
        if not counts:
            return
        top = max(counts)
        factors = list(spec.factors)
        scaled = list(spec.scaled)
        if "all" in scaled or {"first", "all_but_first"} <= set(scaled):
            scaled_models = top
        elif "first" in scaled:
            scaled_models = 1
        else:
            scaled_models = top - 1
        unscaled = top if (1 in factors or any(w != "all" for w in scaled)) else 0
        per_soup_val = (lambda n: n - 1) if spec.greedy else (lambda n: 0)
        per_soup_test = 2 if spec.greedy else 1
        for _ in self.config.seeds:
            for d, a in self.config.magnitude_targets():
                facts = self.facts(d)
                if facts.multilabel:
                    self.notes.append(f"magnitude: {a} on {facts.label} is skipped (multi-label)")
                    continue
                model = model_facts(a, facts)
                modes = list(spec.bn) if model.has_bn else ["none"]
                for tensors in spec.tensors:
                    for bn in modes:
                        if bn == "running_c2" and tensors != "all":
                            continue
                        models = unscaled + scaled_models * sum(1 for c in factors if c != 1)
                        soups_val = soups_test = 0
                        for c in factors:
                            options = 1 if c == 1 else len(scaled)
                            for n in counts:
                                soups_val += options * per_soup_val(n)
                                soups_test += options * per_soup_test
                        self.evaluate(study, d, a, val=models + soups_val, test=models + soups_test)

    def eval_cross_task(self, study: str) -> None:
        spec = self.config.cross_task
        image = (spec.channels, spec.img_size)
        for _ in self.config.seeds:
            for a, b in spec.pairs:
                if self.facts(a).multilabel or self.facts(b).multilabel:
                    self.notes.append(f"cross_task: {a} + {b} is skipped (multi-label)")
                    continue
                for target in (a, b):
                    # Model A, B backbone + A head, the soup: on the target's test.
                    self.evaluate(study, target, spec.arch, test=3, image=image)

    def multitask(self, study: str) -> None:
        """The multi-task suite's pre-training and fine-tunes (none for a suite of the
        user's checkpoints), and every merge's passes: each coefficient of the grid (and
        of its extension past the edge, at most) on every merged task's val, the chosen
        one on test."""
        from mergelab.studies.multitask import coefficient_name, subsets

        spec = self.config.multitask
        if not spec.enabled:
            return
        tasks, image = self.multitask_suite(study)
        passes: dict[str, list[int]] = {t: [0, 0] for t in tasks}  # task -> [val, test]
        done: set[tuple] = set()

        def merge(method: str, merged: list[str], rank: float | None) -> None:
            if (method, tuple(merged), rank) in done:
                return
            done.add((method, tuple(merged), rank))
            grid = len(spec.coefficients)
            grid += spec.extend_grid * (1 if grid > 1 else 2)  # past the edge, at most
            grid = 1 if coefficient_name(method) is None else grid
            for t in merged:
                passes[t][0] += grid
                passes[t][1] += 1

        for t in tasks:  # each task's own backbone, and the pre-trained one
            passes[t][1] += 2
        for method in spec.methods:
            merge(method, tasks, spec.cart_rank if method == "cart" else None)
        for r in spec.ranks:
            merge("cart", tasks, r)
        counts = spec.task_counts if spec.task_counts is not None else range(2, len(tasks) + 1)
        for subset in subsets(tasks, [k for k in counts if k <= len(tasks)], spec.seed).values():
            for method in spec.count_methods:
                merge(method, subset, spec.cart_rank if method == "cart" else None)
        self.suite_passes(study, passes, image, len(spec.training_seeds))

    def multitask_suite(self, study: str, seeds: Sequence[int] | None = None):
        """The multi-task suite's training runs (counted once, whichever study asks
        first; none for the user's checkpoints): its tasks and their model input."""
        from mergelab.train import multitask as mt
        from mergelab.train.user_suite import check_user_suite, user_files, uses_checkpoints

        spec = self.config.multitask
        tasks = mt.spec_tasks(spec)
        image = (spec.in_chans or 1, spec.img_size or 28)
        configs = [
            cfg
            for seed in (spec.training_seeds if seeds is None else seeds)
            for cfg in mt.suite_configs(spec, split_seed=self.config.split_seed, seed=seed)
        ]
        if uses_checkpoints(spec):
            self.notes.append(f"{study}: no training (the suite is the user's checkpoints)")
            facts = check_user_suite(spec, split_seed=self.config.split_seed, read_data=False).facts
            if facts is not None:
                image = (facts.in_chans, facts.img_size)
            for key, path in user_files(spec):
                self.notes.append(f"{study}: reads {key}: {path}")
        for cfg in configs:
            key = _run_key(cfg)
            if key in self.seen:
                continue
            self.seen.add(key)
            run = self.run_tally(cfg)
            self.studies[study].add(run)
            facts = self.facts(cfg.dataset)
            model = model_facts(cfg.arch, facts, in_chans=cfg.in_chans, img_size=cfg.img_size)
            self.setting(facts, cfg.arch, model).add(run)
        self.studies[study].reads += len(configs)
        return tasks, image

    def suite_passes(
        self, study: str, passes: dict[str, list[int]], image: tuple[int, int], seeds: int = 1
    ) -> None:
        """Count ``passes`` (task -> [val, test]) of every suite (``seeds`` of them)."""
        arch = self.config.multitask.arch
        for t, (val, test) in passes.items():
            try:
                self.evaluate(study, t, arch, val=seeds * val, test=seeds * test, image=image)
            except MergeError as exc:  # a task's files are not there yet: say so, go on
                self.notes.append(f"{study}: {t} not counted: {exc}")

    def mergeability(self, study: str) -> None:
        """The suite (first training seed), and per task: its own backbone on test, and
        every merge of every pair it is in on test. The data metrics read ``samples`` val
        images per task and pair (forward and backward passes, not counted)."""
        spec = self.config.mergeability
        if not spec.enabled:
            return
        tasks, image = self.multitask_suite(study, self.config.multitask.training_seeds[:1])
        per_task = 1 + (len(tasks) - 1) * len(spec.methods)
        self.suite_passes(study, {t: [0, per_task] for t in tasks}, image)
        self.notes.append(
            f"{study}: {len(tasks) * (len(tasks) - 1) // 2} task pairs; the data metrics read "
            f"{spec.samples} val samples per task and pair (not counted as passes)"
        )


def plan_study(config: StudyConfig) -> StudyPlan:
    """The work of ``config``: training runs, evaluation passes, FLOPs and GPU hours.

    Needs no data on disk (see :func:`dataset_facts`), trains nothing and creates no
    folder. Raises ``MergeError`` for a config whose recipes, datasets or archs are invalid.
    """
    p = _Planner(config)
    for spec in config.datasets:
        p.facts(spec)
    for name, study in STUDIES.items():
        if study.runner is None and study.recipes is None:
            continue
        p.studies[name] = Tally()
        p.train(name)
    evaluators = {
        "ingredients": p.eval_ingredients,
        "magnitude": p.eval_magnitude,
        "cross_task": p.eval_cross_task,
        "multitask": p.multitask,
        "mergeability": p.mergeability,
    }
    for name in p.studies:
        if name == "weights_vs_features":
            p.eval_wvf(name, models_too="ingredients" not in p.studies)
        elif name in evaluators:
            evaluators[name](name)
    total = Tally()
    for t in p.studies.values():
        total.add(t)
    total.reads = len(p.seen)
    if any(t.steps_upper_bound for t in p.studies.values()):
        p.notes.append("'<=' steps: runs with patience stop early once val stops improving")
    p.notes.append(
        "evaluation passes are upper bounds: a greedy soup is counted with every candidate "
        "it might try; templates and weight_stats read weights and training images only"
    )
    return StudyPlan(
        name=config.name,
        gpu_tflops=config.gpu_tflops,
        datasets=p.datasets,
        studies=p.studies,
        settings=p.settings,
        gflops=p.gflops,
        recipes=len(p.recipes),
        total=total,
        notes=list(dict.fromkeys(p.notes)),
        problems=p.problems,
        train_memory=p.train_memory,
    )
