"""Merged vocabularies (mergekit's ``tokenizer_source: union`` and ``tokenizer:``) as views.

Every vocabulary tensor (embeddings, LM head: :data:`VOCAB_TENSORS`, mergekit's
``vocabulary_axis`` weights, all on axis 0) of every model is seen through
:class:`Permuted`: its rows put in the output vocabulary's order (built by
:mod:`mergelab.io.tokenizer_merge`), rows the model lacks filled as mergekit's
``PermutedVocabulary`` fills them. So the plan, methods and streaming merge them unchanged.

A model lacking an output token gets (mergekit's defaults, unless ``tokens:`` says
otherwise): the row of the only model that has it; zeros when none has it; the base
model's row when the base has it; else the mean of the rows of the models that have it.
A ``tokens:`` entry with ``force`` replaces the token's row in every model. Rows past
the vocabulary (``pad_to_multiple_of``) are the mean of the model's own output rows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mergelab.errors import MergeError
from mergelab.io.checkpoint import Checkpoint, TensorInfo
from mergelab.io.dtypes import (
    STORAGE,
    compute_dtype,
    from_compute,
    is_float,
    parse_dtype,
    promoted,
    round_to,
    to_compute,
    to_torch,
)
from mergelab.io.tokenizer_merge import (
    ModelTokenSource,
    TokenizerSettings,
    TokenSetting,
    VocabularyMerge,
    ZeroSource,
    build_vocabulary,
    key,
    same_tokenizers,
)
from mergelab.recipe import Recipe

__all__ = [
    "VOCAB_TENSORS",
    "Permuted",
    "RowPlan",
    "VocabGroup",
    "is_vocab_tensor",
    "plan_rows",
    "recipe_views",
    "recipe_vocabulary",
    "wrap",
]

VOCAB_TENSORS = frozenset(
    {
        "model.embed_tokens.weight",
        "lm_head.weight",
        "lm_head.bias",
        "embed_tokens.weight",
        "model.language_model.embed_tokens.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
        "model.tok_embeddings.weight",
        "output.weight",
        "embed_out.weight",
        "gpt_neox.embed_in.weight",
        "transformer.wte.weight",
        "transformer.word_embeddings.weight",
        "transformer.embd.wte.weight",
        "transformer.embedding.word_embeddings.weight",
        "transformer.output_layer.weight",
        "backbone.embeddings.weight",
        "embeddings.word_embeddings.weight",
        "bert.embeddings.word_embeddings.weight",
        "roberta.embeddings.word_embeddings.weight",
        "distilbert.embeddings.word_embeddings.weight",
        "cls.predictions.bias",
        "cls.predictions.decoder.weight",
        "lm_head.decoder.weight",
        "lm_head.linear.weight",
        "lm_head.linear.bias",
        "vocab_projector.weight",
        "vocab_projector.bias",
        "shared.weight",
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
    }
)
"""Tensors indexed by token id on axis 0: the names mergekit 0.1.5's architecture files
give a ``vocabulary_axis`` (all 0)."""


def is_vocab_tensor(info: TensorInfo) -> bool:
    return info.name in VOCAB_TENSORS and len(info.shape) >= 1 and is_float(info.dtype)


# A fill: ("zero",), ("row", model, row) or ("mean", ((model, row), ...)).
Fill = tuple


@dataclass
class RowPlan:
    """Where each output row of each model comes from: ``own[model][t]`` its own row
    (-1: not its own), else ``fills[t]``; rows from ``n`` on are padding."""

    models: list[str]
    n: int
    size: int
    own: dict[str, np.ndarray]
    fills: dict[int, Fill]
    notes: list[str] = field(default_factory=list)


def _source_model(value: str, models: Sequence[str], where: str) -> str:
    k = key(value)
    if k not in models:
        raise MergeError(f"{where}: {value} is not one of the models merged")
    return k


def plan_rows(
    merge: VocabularyMerge,
    models: Sequence[str],
    base: str | None,
    tokens: Mapping[str, TokenSetting] | None,
) -> RowPlan:
    """mergekit's PermutedVocabulary (assign_embedding_sources and the default rows) as
    a data-free plan. ``models``: the merged models' keys (:func:`key`), in the recipe's
    order; ``base``: the base model's key, if any."""
    models = list(models)
    tokens = dict(tokens or {})
    perms = np.stack([merge.permutations[m] for m in models])
    present = perms >= 0
    fills: dict[int, Fill] = {}
    own = {m: merge.permutations[m].copy() for m in models}
    for token, tid in merge.vocab.items():
        cfg = tokens.get(token)
        force = cfg is not None and cfg.force
        have = present[:, tid]
        if force:
            for m in models:
                own[m][tid] = -1
        elif have.all():
            continue
        where = f"tokenizer.tokens.{token}.source"
        if cfg is None:
            count = int(have.sum())
            if count == 1:
                i = int(np.argmax(have))
                fills[tid] = ("row", models[i], int(perms[i, tid]))
            elif count == 0:
                fills[tid] = ("zero",)
            elif base in models and present[models.index(base), tid]:
                fills[tid] = ("row", base, int(perms[models.index(base), tid]))
            else:
                fills[tid] = (
                    "mean",
                    tuple(
                        (m, int(p)) for m, p in zip(models, perms[:, tid], strict=True) if p >= 0
                    ),
                )
        elif isinstance(cfg.source, ZeroSource):
            fills[tid] = ("zero",)
        elif isinstance(cfg.source, ModelTokenSource):
            m = _source_model(cfg.source.model, models, where)
            row = cfg.source.token_id
            if row is None:
                vocab = merge.original_vocabs.get(m, {})
                if cfg.source.token not in vocab:
                    raise MergeError(
                        f"{where}: token {cfg.source.token!r} not in {cfg.source.model}"
                    )
                row = vocab[cfg.source.token]
            fills[tid] = ("row", m, int(row))
        elif isinstance(cfg.source, str):
            m = _source_model(cfg.source, models, where)
            if not present[models.index(m), tid]:
                raise MergeError(f"{where}: {cfg.source} has no token {token!r}")
            fills[tid] = ("row", m, int(perms[models.index(m), tid]))
        else:
            raise MergeError(
                f"tokenizer.tokens.{token}: some model lacks it (or force is set): give its source"
            )
    return RowPlan(models, len(merge.vocab), merge.size, own, fills)


class VocabGroup:
    """The checkpoints of one merge seen through a merged vocabulary: shares the row plan
    and lends each view the others' rows. The files close when every view has closed."""

    def __init__(
        self, plan: RowPlan, checkpoints: Mapping[str, Checkpoint], compute: str | None = None
    ) -> None:
        self.plan = plan
        self.checkpoints = dict(checkpoints)
        self.compute = compute
        """``--compat mergekit``: mergekit's compute dtype (``dtype``; ``""``: the inputs'
        promoted dtype), in which its PermutedVocabulary builds the rows; None: mergelab's
        own arithmetic."""
        self.open_views = 0
        self._inners: list[Checkpoint] = []
        self._lock = threading.Lock()

    def view(self, ckpt: Checkpoint, model: str) -> Permuted:
        self.open_views += 1
        self._inners.append(ckpt)
        return Permuted(ckpt, self, model)

    def release(self) -> None:
        with self._lock:
            self.open_views -= 1
            if self.open_views:
                return
        for inner in self._inners:
            inner.close()

    def row(self, model: str, name: str, row: int, out: np.ndarray) -> np.ndarray:
        """Row ``row`` of ``model``'s tensor ``name`` (as stored), in ``out``'s dtype."""
        ckpt = self.checkpoints[model]
        info = ckpt.infos[name]
        width = info.numel // info.shape[0]
        if not 0 <= row < info.shape[0]:
            raise MergeError(f"{ckpt.label}: {name} has {info.shape[0]} rows; no row {row}")
        raw = ckpt.read(name, row * width, (row + 1) * width)
        return to_compute(raw, info.dtype, out)


class Permuted(Checkpoint):
    """``inner`` with its vocabulary tensors in the output vocabulary's rows (flat element
    ranges of the row-major tensor, as every checkpoint reads); other tensors as they are."""

    def __init__(self, inner: Checkpoint, group: VocabGroup, model: str) -> None:
        self.inner = inner
        self.group = group
        self.model = model
        self.label = inner.label
        self.files = inner.files
        self.infos = dict(inner.infos)
        self._padding: dict[str, np.ndarray] = {}
        self._closed = False
        plan = group.plan
        own = plan.own[model]
        for name, info in inner.infos.items():
            if not is_vocab_tensor(info):
                continue
            used = own[own >= 0]
            if used.size and int(used.max()) >= info.shape[0]:
                raise MergeError(
                    f"{inner.label}: {name} has {info.shape[0]} rows but its tokenizer "
                    f"uses token id {int(used.max())}"
                )
            self.infos[name] = TensorInfo(name, (plan.size, *info.shape[1:]), self._held(name))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.group.release()

    def read(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        if not is_vocab_tensor(self.inner.infos.get(name, TensorInfo(name, (), "I8"))):
            return self.inner.read(name, start, stop, out)
        info, stop = self._check_range(name, start, stop)
        width = info.numel // info.shape[0] if info.shape[0] else 1
        r0, r1 = start // width, -(-stop // width)
        rows = self._rows(name, r0, r1, width)
        part = rows.reshape(-1)[start - r0 * width : stop - r0 * width]
        if out is None:
            return part.copy()
        np.copyto(out, part)
        return out

    def _rounding(self, name: str) -> str | None:
        """mergekit's compute dtype for ``name`` (``--compat mergekit``), else None."""
        if self.group.compute is None:
            return None
        if self.group.compute:
            return self.group.compute
        return promoted({c.infos[name].dtype for c in self.group.checkpoints.values()})

    def _held(self, name: str) -> str:
        """The dtype this view gives ``name`` in: as stored, or (``--compat mergekit``)
        mergekit's compute dtype, which its filled rows need and its own rows are cast to."""
        return self._rounding(name) or self.inner.infos[name].dtype

    def _compute(self, name: str) -> np.dtype:
        dtypes = {c.infos[name].dtype for c in self.group.checkpoints.values() if name in c.infos}
        return compute_dtype(dtypes | {self.inner.infos[name].dtype})

    def _rows(self, name: str, r0: int, r1: int, width: int) -> np.ndarray:
        """Output rows ``[r0, r1)`` of ``name`` in the storage dtype."""
        plan = self.group.plan
        stored, dtype = self.inner.infos[name].dtype, self._held(name)
        buf = np.zeros((r1 - r0, width), dtype=STORAGE[dtype])
        n = plan.n
        own = plan.own[self.model][r0 : min(r1, n)]
        if own.size:
            # runs of consecutive source rows: one read each
            breaks = np.flatnonzero((np.diff(own) != 1) | (own[1:] < 0) | (own[:-1] < 0)) + 1
            for a, b in zip(np.r_[0, breaks], np.r_[breaks, own.size], strict=True):
                if own[a] >= 0:
                    lo, hi = int(own[a]) * width, (int(own[a]) + b - a) * width
                    if dtype == stored:
                        self.inner.read(name, lo, hi, out=buf[a:b].reshape(-1))
                    else:  # cast to mergekit's compute dtype, as its GatherTensors does
                        values = self._values(self.inner, name, lo, hi)
                        buf[a:b] = from_compute(values, dtype).reshape(b - a, width)
            cdt = self._compute(name)
            for i in np.flatnonzero(own < 0):
                fill = plan.fills.get(r0 + int(i), ("zero",))
                buf[i] = from_compute(self._fill(name, fill, width, cdt), dtype)
        if r1 > n:
            buf[max(n - r0, 0) :] = self._pad_row(name, width)
        return buf

    def _fill(self, name: str, fill: Fill, width: int, cdt: np.dtype) -> np.ndarray:
        if fill[0] == "zero":
            return np.zeros(width, dtype=cdt)
        if fill[0] == "row":
            return self.group.row(fill[1], name, fill[2], np.empty(width, dtype=cdt))
        # mergekit: zeros, plus each model's row in turn, divided by the count (in its
        # compute dtype, rounded after each step: --compat mergekit)
        rounding = self._rounding(name)
        total = np.zeros(width, dtype=cdt)
        scratch = np.empty(width, dtype=cdt)
        for model, row in fill[1]:
            total += self._cast(self.group.row(model, name, row, scratch), rounding)
            self._cast(total, rounding)
        total /= cdt.type(len(fill[1]))
        return self._cast(total, rounding)

    @staticmethod
    def _cast(values: np.ndarray, rounding: str | None) -> np.ndarray:
        return values if rounding is None else round_to(values, rounding)

    @staticmethod
    def _values(ckpt: Checkpoint, name: str, lo: int, hi: int) -> np.ndarray:
        raw = ckpt.read(name, lo, hi)
        return to_compute(raw, ckpt.infos[name].dtype, np.empty(raw.shape, np.float32))

    def _pad_row(self, name: str, width: int) -> np.ndarray:
        """The padding rows' value: the mean of this model's output rows (mergekit, after
        https://nlp.stanford.edu/~johnhew/vocab-expansion.html)."""
        if name not in self._padding and self._rounding(name) is not None:
            # mergekit: torch.mean over the rows in its compute dtype (float32 sums)
            import torch

            dtype = self._held(name)
            rows = self._rows(name, 0, self.group.plan.n, width)
            values = torch.from_numpy(to_compute(rows, dtype, np.empty(rows.shape, np.float32)))
            mean = values.to(to_torch(dtype)).mean(dim=0).float().numpy()
            self._padding[name] = from_compute(mean, dtype)
        if name not in self._padding:
            dtype = self.inner.infos[name].dtype
            total = np.zeros(width, dtype=np.float64)
            n = self.group.plan.n
            step = max(1, (1 << 20) // max(width, 1))
            for a in range(0, n, step):
                b = min(a + step, n)
                rows = self._rows(name, a, b, width)
                values = to_compute(rows, dtype, np.empty(rows.shape, dtype=np.float32))
                total += values.sum(axis=0, dtype=np.float64)
            mean = (total / max(n, 1)).astype(self._compute(name))
            self._padding[name] = from_compute(mean, dtype)
        return self._padding[name]


def requested(recipe: Recipe) -> tuple[str, TokenizerSettings | None] | None:
    """The recipe's tokenizer source and ``tokenizer:`` section, when it names either."""
    if recipe.tokenizer is not None:
        return recipe.tokenizer.source, recipe.tokenizer
    if recipe.tokenizer_source is not None:
        return recipe.tokenizer_source, None
    return None


def model_paths(recipe: Recipe) -> list[str]:
    """Every model of a recipe, once, base last when not listed (mergekit's order)."""
    out = list(recipe.inputs)
    if recipe.base_model is not None and key(recipe.base_model) not in {key(p) for p in out}:
        out.append(recipe.base_model)
    return out


_BUILT: dict[str, VocabularyMerge] = {}


def recipe_vocabulary(recipe: Recipe) -> VocabularyMerge | None:
    """The recipe's merged vocabulary, or None where the tokenizer files are copied as
    they are: no tokenizer source, or ``tokenizer_source: base`` / a model whose
    vocabulary is every model's (same tokenizer files and vocab_size). Built once per
    recipe (planning and the output's files both ask)."""
    asked = requested(recipe)
    if asked is None:
        return None
    source, settings = asked
    where = "tokenizer.source" if settings is not None else "tokenizer_source"
    paths = model_paths(recipe)
    if source == "base":
        if recipe.base_model is None:
            raise MergeError(f"{where}: base, but the recipe has no base_model")
        folder = recipe.base_model
    elif source != "union":
        folder = source
        if not Path(folder).is_dir():
            raise MergeError(f"{where}: {folder} is not a folder")
    if settings is None and source != "union" and same_tokenizers([*paths, folder]):
        return None
    memo = json.dumps([str(Path.cwd()), recipe.model_dump(mode="json")], sort_keys=True)
    if memo not in _BUILT:
        _BUILT.clear()
        base = recipe.base_model or paths[0]
        _BUILT[memo] = build_vocabulary(
            base,
            paths,
            "union" if source == "union" else ("base" if source == "base" else folder),
            add_tokens=list((settings.tokens or {}) if settings else ()),
            pad_to_multiple_of=settings.pad_to_multiple_of if settings else None,
            where=where,
        )
    return _BUILT[memo]


def recipe_views(
    recipe: Recipe,
    merge: VocabularyMerge,
    checkpoints: Sequence[tuple[str, Checkpoint]],
) -> tuple[list[Checkpoint], list[str]]:
    """:func:`wrap` with the recipe's models, base and ``tokens``."""
    tokens = recipe.tokenizer.tokens if recipe.tokenizer is not None else None
    compute = None
    if recipe.compat == "mergekit":
        try:
            compute = parse_dtype(recipe.dtype) if recipe.dtype is not None else ""
        except ValueError as exc:
            raise MergeError(f"dtype: {exc}") from None
    return wrap(merge, checkpoints, model_paths(recipe), recipe.base_model, tokens, compute)


def wrap(
    merge: VocabularyMerge,
    checkpoints: Sequence[tuple[str, Checkpoint]],
    order: Sequence[str],
    base: str | None,
    tokens: Mapping[str, TokenSetting] | None,
    compute: str | None = None,
) -> tuple[list[Checkpoint], list[str]]:
    """``checkpoints`` (path, opened checkpoint; a path may come twice) seen through the
    merged vocabulary, in the same order, and notes. ``order``: every model's path, in
    mergekit's order (that of the means of rows)."""
    models = list(dict.fromkeys(key(p) for p in order))
    plan = plan_rows(merge, models, key(base) if base is not None else None, tokens)
    first: dict[str, Checkpoint] = {}
    for p, c in checkpoints:
        first.setdefault(key(p), c)
    group = VocabGroup(plan, first, compute)
    views = [group.view(c, key(p)) for p, c in checkpoints]
    names = sorted({n for v in views for n, i in v.inner.infos.items() if is_vocab_tensor(i)})
    padded = f", padded to {merge.size}" if merge.size != len(merge.vocab) else ""
    notes = [
        f"vocabulary merged ({len(merge.vocab)} tokens{padded}): "
        f"{', '.join(names) or 'no vocabulary tensor'} in its order for every model; "
        f"{len(plan.fills)} token row(s) filled where a model lacks the token or force is set"
    ]
    return list(views), notes + merge.notes + plan.notes
