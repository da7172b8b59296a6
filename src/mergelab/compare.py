"""``compare``: evaluate N checkpoints once, then score every merge and ensemble of them.

Each model runs once on val and once on test (cached on disk by content, so a second
comparison runs nothing); ensembles are computed from those outputs; only soups, being new
weights, get passes of their own. The result is a tidy table, one row per
(method, split, metric), with what each method costs at inference (parameters, FLOPs).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mergelab.atomic import atomic_write_text
from mergelab.checks import (
    claim_output_folder,
    output_folder,
    regular_file,
    removed_if_left_empty,
)
from mergelab.combine import METHODS, Combination, Ingredient, rank_by_score, run_combinations
from mergelab.compare_cli import MAX_IMG_SIZE, MAX_SEED
from mergelab.data import DatasetSplits, ImageSpec, load_dataset
from mergelab.data.info import DatasetInfo
from mergelab.errors import ConfigError, MergeError
from mergelab.evaluate import (
    Evaluator,
    ModelSource,
    compute_metrics,
    default_cache_dir,
    primary_metric,
)
from mergelab.evaluate.metrics import nonfinite
from mergelab.models.infer import CHANNELS, Fact, checkpoint_shapes, read_input
from mergelab.results import RESULT_COLUMNS, correct_examples

__all__ = [
    "EXTRA_COLUMNS",
    "MAX_IMG_SIZE",
    "MAX_SEED",
    "RESULT_COLUMNS",
    "RESULT_FILES",
    "CompareReport",
    "compare",
    "run_compare",
    "write_results",
]

STUDY = "compare"
SPLITS = ("val", "test")
EXTRA_COLUMNS = (
    "kind",
    "n_members",
    "members",
    "params",
    "flops",
    "forward_passes",
    "forward_samples",
    "seconds",
)

RESULT_FILES = ("results.csv", "results.json")

ModelLike = str | os.PathLike[str] | Mapping[str, Any] | ModelSource


@dataclass
class CompareReport:
    """Everything a comparison produced: the table, and how much work it took.

    ``timings`` (seconds): ``load`` (data, hashes), ``evaluate`` (every model on val and test),
    ``combine`` (all combinations, soup passes included), ``soup_passes`` (the forward passes
    of merged models only, part of ``combine``), ``cost`` (parameter/FLOP counting), ``total``.
    ``passes``: split-passes, batches and samples by kind (``model``, ``soup``, ``bn``).
    ``examples``: for each row of ``frame`` (by index) whose metric is accuracy, the
    per-example scores whose mean is its value (1 = correct; "Perf Ave": the share of the
    models that are correct), for paired intervals.
    """

    frame: pd.DataFrame
    timings: dict[str, float]
    passes: dict[str, dict[str, int]]
    notes: list[str]
    files: list[Path]
    cache_dir: Path
    ingredients: list[Ingredient]
    combinations: dict[str, Combination]
    evaluator: Evaluator = field(repr=False)
    examples: dict[int, np.ndarray] = field(default_factory=dict, repr=False)


class _CompareSource(ModelSource):
    """A checkpoint as compare's float32 model holds it: floating tensors in float32 and
    BatchNorm counters the file lacks (old torchvision files) filled in, so that a soup of
    float16 and float32 checkpoints, or of old and new files, averages like tensors instead
    of failing. The content hash stays that of the file (or state dict) as given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counters: dict[str, torch.Tensor] = {}
        self._weights: dict[str, torch.Tensor] | None = None

    def fill_counters(self, counters: Mapping[str, torch.Tensor]) -> None:
        """Tensors (name -> default) to add where the checkpoint lacks them."""
        self._counters = dict(counters)
        self._weights = None

    @classmethod
    def wrap(cls, obj: ModelLike, index: int) -> _CompareSource:
        src = ModelSource.of(obj, index=index)
        if src.path is not None:
            if src.path.exists():  # hashing a FIFO would wait forever
                regular_file(src.path, "--models takes checkpoint files and model folders")
            return cls(src.name, path=src.path, digest=src.digest)
        return cls(src.name, state_dict=src.state_dict(), digest=src.digest)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._weights is None:
            state = super().state_dict()
            weights = {
                k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v
                for k, v in state.items()
            }
            for name, default in self._counters.items():
                weights.setdefault(name, default)
            super().release()  # keep one copy of a file's weights, not two
            self._weights = weights
        return self._weights

    def release(self) -> None:
        self._weights = None
        super().release()


def _names(sources: Sequence[ModelSource]) -> None:
    """Make model names unique (two ``model.safetensors`` in different folders)."""
    seen: dict[str, int] = {}
    for s in sources:
        seen[s.name] = seen.get(s.name, 0) + 1
    counts: dict[str, int] = {}
    for s in sources:
        if seen[s.name] > 1:
            counts[s.name] = counts.get(s.name, 0) + 1
            s.name = f"{s.name}#{counts[s.name]}"


_OPTIONS = {"in_chans": "--in-chans", "img_size": "--img-size", "num_classes": "--num-classes"}
_MEANING = {
    "in_chans": lambda v: f"{v} input channel{'s' * (v != 1)}",
    "img_size": lambda v: f"{v}x{v} images",
    "num_classes": lambda v: f"{v} class{'es' * (v != 1)}",
}


def _file(source: ModelSource) -> str:
    return str(source.path) if source.path is not None else source.name


def _read_inputs(
    sources: Sequence[ModelSource], arch: str, head: str | None, given: Mapping[str, int | None]
) -> dict[str, tuple[ModelSource, Fact]]:
    """What the checkpoints fix (input channels, image size, classes), each with the first
    file that says so. An explicit option must agree with every checkpoint, and the
    checkpoints with each other; either conflict is one line naming files and tensors."""
    found: dict[str, tuple[ModelSource, Fact]] = {}
    for src in sources:
        shapes = checkpoint_shapes(src.path if src.path is not None else src.state_dict())
        for name, fact in read_input(arch, shapes, head=head).facts().items():
            want = given[name]
            if want is not None and fact.value != want:
                raise ConfigError(
                    f"{_OPTIONS[name]} {want}, but {_file(src)} has {fact}, which means "
                    + _MEANING[name](fact.value)
                )
            first, seen = found.setdefault(name, (src, fact))
            if seen.value != fact.value:
                raise ConfigError(
                    f"{_file(first)} has {seen} ({_MEANING[name](seen.value)}) but "
                    f"{_file(src)} has {fact} ({_MEANING[name](fact.value)}); the "
                    f"models of one comparison must agree"
                )
    return found


def _spec(info: DatasetInfo, in_chans: int | None, img_size: int | None) -> ImageSpec | None:
    """The model's input: native channels and size unless ``in_chans``/``img_size`` say."""
    if in_chans is None and img_size is None:
        return None
    if in_chans is not None and in_chans not in CHANNELS:
        raise ConfigError(f"--in-chans {in_chans}: images can be given 1 or 3 channels")
    if img_size is not None and not 1 <= img_size <= MAX_IMG_SIZE:
        raise ConfigError(f"--img-size {img_size}: must be 1..{MAX_IMG_SIZE}")
    return ImageSpec(
        channels=in_chans if in_chans is not None else info.channels,
        size=img_size if img_size is not None else info.image_size[0],
    )


def _model_input(
    info: DatasetInfo,
    found: Mapping[str, tuple[ModelSource, Fact]],
    given: Mapping[str, int | None],
    n_models: int,
) -> tuple[int | None, ImageSpec | None, list[str]]:
    """``num_classes`` and the input spec from the options, else from the checkpoints (the
    data adapts to the model), and notes saying what was read and how images adapt."""
    kind = "labels" if info.multilabel else "classes"
    classes = given["num_classes"]
    if "num_classes" in found and classes is None:
        src, fact = found["num_classes"]
        if fact.value != info.num_classes:
            raise ConfigError(
                f"{_file(src)} has {fact}, which means {fact.value} {kind}, but {info.name} "
                f"has {info.num_classes} {kind}"
            )
        classes = fact.value
    chans, size = given["in_chans"], given["img_size"]
    if chans is None and "in_chans" in found:
        src, fact = found["in_chans"]
        if fact.value not in CHANNELS:
            raise ConfigError(
                f"{_file(src)} has {fact}, which means {fact.value} input channels; images "
                f"can be given 1 or 3"
            )
        chans = fact.value if fact.value != info.channels else None
    if size is None and "img_size" in found:
        fact = found["img_size"][1]
        size = fact.value if (fact.value, fact.value) != tuple(info.image_size) else None
    spec = _spec(info, chans, size)
    notes = []
    read = [n for n in _OPTIONS if n in found and given[n] is None]
    if read:
        facts = ", ".join(f"{n} {found[n][1].value} ({found[n][1].tensor})" for n in read)
        first = _file(found[read[0]][0])
        others = f" and the {n_models - 1} other model(s), which agree" if n_models > 1 else ""
        notes.append(f"{facts} read from {first}{others}")
    if spec is not None:
        h, w = info.image_size
        how = []
        if spec.channels != info.channels:
            how.append("grey repeated to RGB" if spec.channels == 3 else "RGB to grey (luma)")
        if (spec.size, spec.size) != (h, w):
            how.append(f"resized to {spec.size}x{spec.size}")
        if how:
            notes.append(
                f"{info.name} images ({info.channels}x{h}x{w}) adapted to the model: "
                + ", ".join(how)
            )
    return classes, spec, notes


def _single_class_notes(ev: Evaluator) -> list[str]:
    """Multi-label: name the labels AUROC skips because a split has one class only."""
    notes = []
    for split in SPLITS:
        t = ev.targets(split)
        pos = (t > 0.5).sum(axis=0)
        bad = [int(j) for j in np.flatnonzero((pos == 0) | (pos == len(t)))]
        if bad:
            notes.append(
                f"AUROC on {split}: skipped {len(bad)} label(s) with a single class "
                f"(label index {', '.join(map(str, bad))}); the mean is over the others"
            )
    return notes


def run_compare(
    models: Sequence[ModelLike],
    *,
    arch: str,
    num_classes: int | None = None,
    data: str | DatasetSplits,
    out: str | os.PathLike[str] | None = None,
    head: str | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    strict_greedy: bool = False,
    bn_recalibrate: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    bn_batches: int | None = None,
    device: str | None = None,
) -> CompareReport:
    """:func:`compare` with its timings, pass counts and intermediate objects."""
    t_start = time.perf_counter()
    if not models:
        raise MergeError("compare: give at least one model")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed {seed}: must be 0..{MAX_SEED}")
    if img_size is not None and not 1 <= img_size <= MAX_IMG_SIZE:
        raise ConfigError(f"--img-size {img_size}: must be 1..{MAX_IMG_SIZE}")
    # A file, a read-only folder or a file mergelab did not write under ``out`` is refused
    # before any work; the folder is made only when the results are written.
    folder = None
    if out is not None:
        folder = output_folder(Path(out).expanduser(), writes=RESULT_FILES)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    with removed_if_left_empty(folder, cache_root):
        return _run_compare(
            models,
            arch=arch,
            num_classes=num_classes,
            data=data,
            folder=folder,
            head=head,
            img_size=img_size,
            in_chans=in_chans,
            batch_size=batch_size,
            seed=seed,
            strict_greedy=strict_greedy,
            bn_recalibrate=bn_recalibrate,
            cache_root=cache_root,
            progress=progress,
            bn_batches=bn_batches,
            device=device,
            t_start=t_start,
        )


def _run_compare(
    models: Sequence[ModelLike],
    *,
    arch: str,
    num_classes: int | None,
    data: str | DatasetSplits,
    folder: Path | None,
    head: str | None,
    img_size: int | None,
    in_chans: int | None,
    batch_size: int,
    seed: int,
    strict_greedy: bool,
    bn_recalibrate: bool,
    cache_root: Path,
    progress: bool,
    bn_batches: int | None,
    device: str | None,
    t_start: float,
) -> CompareReport:
    splits = data if isinstance(data, DatasetSplits) else load_dataset(data, seed=seed)
    info = splits.info
    if num_classes is not None and num_classes != info.num_classes:
        kind = "labels" if info.multilabel else "classes"
        raise ConfigError(
            f"--num-classes {num_classes}, but {info.name} has {info.num_classes} {kind}"
        )
    # Wrapping hashes every model now: a missing file fails before any work.
    sources = [_CompareSource.wrap(m, i) for i, m in enumerate(models)]
    _names(sources)
    given = {"in_chans": in_chans, "img_size": img_size, "num_classes": num_classes}
    found = _read_inputs(sources, arch, head, given)
    num_classes, spec, notes = _model_input(info, found, given, len(sources))
    ev = Evaluator(
        splits,
        arch=arch,
        num_classes=num_classes,
        head=head,
        spec=spec,
        batch_size=batch_size,
        cache_dir=cache_root,
        device=device,
        progress=progress,
        bn_batches=bn_batches,
    )
    counters = {  # BatchNorm fills a missing counter in itself; soups need it in every input
        k: torch.zeros_like(v, device="cpu")
        for k, v in ev.model.state_dict().items()  # builds once: a bad arch/head fails here
        if k.endswith(".num_batches_tracked")
    }
    for s in sources:
        s.fill_counters(counters)
    t_loaded = time.perf_counter()

    counter = ev.counter
    ingredients: list[Ingredient] = []
    own_passes: list[tuple[int, int, float]] = []
    for s in sources:
        n0 = len(counter.records)
        ingredients.append(Ingredient(s, {split: ev.outputs(s, split) for split in SPLITS}))
        new = counter.records[n0:]
        own_passes.append((len(new), sum(r.samples for r in new), sum(r.seconds for r in new)))
    notes += _nonfinite_notes(ingredients)
    t_evaluated = time.perf_counter()

    combos = run_combinations(ev, ingredients, strict=strict_greedy, bn_recalibrate=bn_recalibrate)
    notes += _nonfinite_notes(combos.values())
    t_combined = time.perf_counter()
    params, flops = ev.cost()
    t_cost = time.perf_counter()

    multilabel = info.multilabel
    metric_names = (primary_metric(multilabel), "nll", "ece")
    notes += _single_class_notes(ev) if multilabel else []
    rows: list[dict[str, Any]] = []
    examples: dict[int, np.ndarray] = {}

    def add(
        method: str,
        kind: str,
        split: str,
        metrics: Mapping[str, float],
        per_example: np.ndarray | None = None,
        **extra: Any,
    ) -> None:
        for name in metric_names:
            if name == "accuracy" and per_example is not None:
                examples[len(rows)] = per_example
            rows.append(
                {
                    "study": STUDY,
                    "dataset": info.name,
                    "arch": arch,
                    "n_models": len(ingredients),
                    "method": method,
                    "magnitude": 1.0,
                    "split": split,
                    "metric": name,
                    "value": float(metrics[name]),
                    "kind": kind,
                    **extra,
                }
            )

    def score(logits: np.ndarray, split: str) -> dict[str, float]:
        return compute_metrics(logits, ev.targets(split), multilabel=multilabel)

    def correct(logits: np.ndarray, split: str) -> np.ndarray | None:
        return None if multilabel else correct_examples(logits, ev.targets(split))

    individual = [{s: score(i.outputs[s].logits, s) for s in SPLITS} for i in ingredients]
    each = [{s: correct(i.outputs[s].logits, s) for s in SPLITS} for i in ingredients]
    for k, (ing, m, (n_pass, n_samp, secs)) in enumerate(
        zip(ingredients, individual, own_passes, strict=True)
    ):
        for s in SPLITS:
            add(
                "Individual",
                "individual",
                s,
                m[s],
                each[k][s],
                n_members=1,
                members=ing.name,
                params=params,
                flops=flops,
                forward_passes=n_pass,
                forward_samples=n_samp,
                seconds=secs,
            )
    everyone = ";".join(i.name for i in ingredients)
    for s in SPLITS:
        ave = {k: float(np.mean([m[s][k] for m in individual])) for k in metric_names}
        share = None if multilabel else np.mean([e[s] for e in each], axis=0).astype(np.float32)
        add(
            "Perf Ave",
            "summary",
            s,
            ave,
            share,
            n_members=len(ingredients),
            members=everyone,
            params=params,
            flops=flops,
            forward_passes=0,
            forward_samples=0,
            seconds=0.0,
        )
    main = primary_metric(multilabel)
    best = rank_by_score([m["val"][main] for m in individual])[0]  # chosen on val only
    for s in SPLITS:
        add(
            "Best Individual",
            "individual",
            s,
            individual[best][s],
            each[best][s],
            n_members=1,
            members=ingredients[best].name,
            params=params,
            flops=flops,
            forward_passes=0,
            forward_samples=0,
            seconds=0.0,
        )
    for method in METHODS:
        comb = combos.get(method)
        if comb is None:
            continue
        for s in SPLITS:
            add(
                method,
                comb.kind,
                s,
                score(comb.logits[s], s),
                correct(comb.logits[s], s),
                n_members=len(comb.members),
                members=";".join(ingredients[i].name for i in comb.members),
                params=params * comb.n_inference_models,
                flops=flops * comb.n_inference_models,
                forward_passes=comb.forward_passes,
                forward_samples=comb.forward_samples,
                seconds=comb.seconds,
            )
    frame = pd.DataFrame(rows, columns=[*RESULT_COLUMNS, *EXTRA_COLUMNS])

    timings = {
        "load": t_loaded - t_start,
        "evaluate": t_evaluated - t_loaded,
        "combine": t_combined - t_evaluated,
        "soup_passes": counter.seconds("soup") + counter.seconds("bn"),
        "cost": t_cost - t_combined,
    }
    passes = {
        kind: {
            "passes": counter.passes(kind),
            "batches": counter.batches(kind),
            "samples": counter.samples(kind),
        }
        for kind in ("model", "soup", "bn")
    }
    files: list[Path] = []
    if folder is not None:
        files = write_results(frame, folder)
    timings["total"] = time.perf_counter() - t_start
    frame.attrs.update(
        {"timings": timings, "passes": passes, "notes": notes, "cache_dir": str(cache_root)}
    )
    return CompareReport(
        frame, timings, passes, notes, files, cache_root, ingredients, combos, ev, examples
    )


def _nonfinite_notes(produced: Iterable[Ingredient | Combination]) -> list[str]:
    """Name each model (its file) or combination whose logits hold NaN or infinity, with
    the share of such rows per split; if every input model is non-finite on every row,
    there is nothing to compare: one error line naming them."""
    notes, dead = [], []
    items = list(produced)
    for item in items:
        if isinstance(item, Ingredient):
            who, logits = _file(item.source), {s: item.outputs[s].logits for s in SPLITS}
        else:
            who, logits = item.method, {s: item.logits[s] for s in SPLITS}
        share = {s: nonfinite(logits[s]) for s in SPLITS}
        if any(v > 0 for v in share.values()):
            shares = ", ".join(f"{share[s]:.1%} of {s} rows" for s in SPLITS)
            notes.append(
                f"{who}: non-finite logits (NaN or Inf) on {shares}; those rows count as "
                f"wrong, and its NLL and ECE are NaN"
            )
        dead.append(all(v == 1 for v in share.values()))
    if items and isinstance(items[0], Ingredient) and all(dead):
        raise ConfigError(
            f"every model gives non-finite logits (NaN or Inf) on every val and test row "
            f"({', '.join(_file(i.source) for i in items)}): nothing to compare; are the "
            f"weights overflowing?"
        )
    return notes


def write_results(frame: pd.DataFrame, out: str | os.PathLike[str]) -> list[Path]:
    """Write ``OUT/results.csv`` and ``OUT/results.json`` (records; NaN as null), each
    atomically: a reader never sees a half-written file, a failure leaves the old one.
    A file of those names that mergelab did not write is refused (:func:`output_folder`)."""
    folder = claim_output_folder(
        output_folder(Path(out).expanduser(), writes=RESULT_FILES), "compare"
    )
    csv_text = frame.to_csv(index=False, lineterminator="\n")
    records = [
        {k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")
    ]
    json_text = json.dumps(records, indent=1, allow_nan=False) + "\n"
    return [
        atomic_write_text(folder / "results.csv", csv_text),
        atomic_write_text(folder / "results.json", json_text),
    ]


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def compare(
    models: Sequence[ModelLike],
    *,
    arch: str,
    num_classes: int | None = None,
    data: str | DatasetSplits,
    out: str | os.PathLike[str] | None = None,
    head: str | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    strict_greedy: bool = False,
    bn_recalibrate: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    bn_batches: int | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Compare N checkpoints of one architecture: individual models, "Perf Ave", "Best
    Individual", Uniform/Greedy Soup and the five ensembles, on val and test.

    ``models`` are checkpoint paths or state dicts; ``data`` a ``load_dataset`` spec (split
    with ``seed``) or loaded ``DatasetSplits``. ``in_chans``, ``img_size`` (where the model
    fixes it: ViTs, flat models) and ``num_classes`` are read from the checkpoints unless
    given, and images adapt to them (channels repeated or turned grey, resized); otherwise
    inputs keep the dataset's native channels and size. Selection (best individual, greedy
    choices) uses val only; greedy ensembles take the greedy soup's members, their "(own)"
    variants search on their own. ``bn_recalibrate``: re-estimate BatchNorm statistics of
    merged models on train data. Outputs are cached under ``cache_dir`` (default
    :func:`default_cache_dir`).

    Returns tidy rows: :data:`RESULT_COLUMNS` then :data:`EXTRA_COLUMNS`; the metric is
    ``accuracy`` (``auroc`` for multi-label data), ``nll`` and ``ece``. With ``out``, also
    writes ``OUT/results.csv`` and ``OUT/results.json``. ``frame.attrs`` holds timings, pass
    counts and notes.
    """
    return run_compare(
        models,
        arch=arch,
        num_classes=num_classes,
        data=data,
        out=out,
        head=head,
        img_size=img_size,
        in_chans=in_chans,
        batch_size=batch_size,
        seed=seed,
        strict_greedy=strict_greedy,
        bn_recalibrate=bn_recalibrate,
        cache_dir=cache_dir,
        progress=progress,
        bn_batches=bn_batches,
        device=device,
    ).frame
