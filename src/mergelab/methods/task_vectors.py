"""Task-vector methods as configurations of one class (after mergekit's generalized task
arithmetic): task arithmetic, TIES, DARE and Model Breadcrumbs differ only in how each task
vector ``tau_i = theta_i - theta_base`` is sparsified, whether signs are elected, and how the
survivors are combined.

    tau_i'  = rescale(mask_i * tau_i)             sparsify: none | magnitude | random | outliers
    tau_i'' = w_i * tau_i'
    elect   = sign(sum_i tau_i'')                  consensus "sum" (TIES), or sign of the
                                                   count of signs ("count"); none keeps all
    m_i     = [sign(tau_i'') == elect]
    theta   = theta_base + lambda * sum_i m_i tau_i'' / (sum_i m_i w_i   if normalize else 1)

Without consensus the divisor is sum_i w_i. Defaults follow mergekit, so a mergekit recipe
gives the same tensors; the papers' variants are one parameter away: ``scope=model`` takes
TIES's top-k over the whole model (as the TIES paper and FusionBench do) instead of per
tensor; ``rescale=inverse`` is DARE's 1/(1-p), ``rescale=norm`` mergekit's L1-norm-preserving
rescale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from mergelab.methods.base import (
    DeltaAccess,
    MergeMethod,
    MethodParams,
    ModelParams,
    ModelStatistics,
    TensorContext,
    TensorStatistics,
    register,
    seeded_generator,
)
from mergelab.methods.selection import Cutoff, top_k_cutoffs, torch_order_cutoffs

RANDOM_BLOCK = 1 << 20
CACHE_BLOCK = 1 << 17
"""Elements merged at a time within a chunk: every pass over the models' values (about a
dozen) then runs in cache rather than from memory, which makes TIES a third faster."""
NORM_EPS = 1e-7


@dataclass(frozen=True)
class Kept:
    """One task vector's selection by magnitude: above ``keep``, and not above ``drop``."""

    keep: Cutoff
    drop: Cutoff


@dataclass(frozen=True)
class ModelSelection:
    """One model's statistics for one parameter: its selection (None keeps everything) and
    the factor restoring its L1 norm after pruning (``rescale=norm``)."""

    kept: Kept | None
    scale: float = 1.0


@dataclass(frozen=True)
class TaskVectorTensorStats(TensorStatistics):
    """Per-tensor statistics: one :class:`ModelSelection` per model."""

    models: tuple[ModelSelection, ...]


@dataclass(frozen=True)
class TaskVectorModelStats(ModelStatistics):
    """Whole-model top-k (``scope=model``): one selection per model, over the whole model."""

    kept: tuple[Kept | None, ...]


class TaskVectorParams(MethodParams):
    lambda_: float = Field(1.0, alias="lambda")
    """Scale of the combined task vector."""
    normalize: bool = False
    """Divide by the (elected) sum of weights: a disjoint mean rather than a sum."""
    sparsify: Literal["none", "magnitude", "random", "outliers"] = "none"
    """How each task vector is pruned: top-k |tau| (TIES), Bernoulli keep with probability
    density (DARE), or drop the largest gamma and the smallest values (Breadcrumbs)."""
    consensus: Literal["none", "sum", "count"] = "none"
    """Sign election: by mass (sum of values, TIES), by count of signs, or none."""
    rescale: Literal["none", "inverse", "norm"] = "none"
    """After pruning: divide by density (DARE's 1/(1-p)), restore the L1 norm (mergekit)."""
    scope: Literal["tensor", "model"] = "tensor"
    """Top-k per tensor (mergekit) or over the whole model (TIES paper, FusionBench)."""
    seed: int = 0
    """Seed of the random masks (``sparsify=random``)."""

    @model_validator(mode="before")
    @classmethod
    def _rescale_bool(cls, data: Any) -> Any:
        # mergekit writes rescale: true/false; true means "the method's own rescale".
        if isinstance(data, dict) and isinstance(data.get("rescale"), bool):
            default = cls.model_fields["rescale"].default
            data = {
                **data,
                "rescale": (default if default != "none" else "inverse")
                if data["rescale"]
                else "none",
            }
        return data


class TaskVectorModelParams(ModelParams):
    density: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of each task vector kept (DARE's drop rate p = 1 - density)."""
    gamma: float = Field(0.01, ge=0.0, le=1.0)
    """Breadcrumbs: fraction of largest-magnitude values removed as outliers."""
    drop_rate: float | None = Field(None, ge=0.0, le=1.0)
    """DARE's p; when given, density = 1 - drop_rate."""

    @model_validator(mode="after")
    def _drop_rate(self) -> TaskVectorModelParams:
        if self.drop_rate is not None:
            object.__setattr__(self, "density", 1.0 - self.drop_rate)
        return self


class TaskVectorMerge(MergeMethod):
    """Shared implementation; registered subclasses only change defaults."""

    Params = TaskVectorParams
    PerModel = TaskVectorModelParams
    base_policy = "required"
    params: TaskVectorParams
    per_model: list[TaskVectorModelParams]

    @classmethod
    def mergekit_params(cls, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """mergekit's rescale is the L1 norm's whenever on (``rescale: true``, DARE's
        default); mergelab's DARE default is the paper's 1/density."""
        default = cls.Params.model_fields["rescale"].default
        rescale = params.get("rescale", default != "none")
        if not isinstance(rescale, bool):
            return params, None
        if rescale and "rescale" not in params:
            note = f"{cls.name}: rescale as mergekit's, to each task vector's L1 norm"
        else:
            note = None
        return {**params, "rescale": "norm" if rescale else "none"}, note

    def mergekit_workspace_bytes(self, numel: int, n_models: int) -> int:
        # torch's sort of one task vector's magnitudes: the values and int64 positions
        return 12 * numel if self._selects_top_k and self.params.scope == "tensor" else 0

    @property
    def _selects_top_k(self) -> bool:
        return self.params.sparsify in ("magnitude", "outliers")

    @property
    def uses_model_statistics(self) -> bool:
        return self._selects_top_k and self.params.scope == "model"

    @property
    def uses_tensor_statistics(self) -> bool:
        sparse = self.params.sparsify != "none"
        return (self._selects_top_k and self.params.scope == "tensor") or (
            sparse and self.params.rescale == "norm"
        )

    # -- which elements survive --------------------------------------------------------

    def _kept_ranks(self, i: int, numel: int) -> tuple[int, int] | None:
        """(k1, k2): keep the k1 largest |tau| minus the k2 largest; None keeps everything."""
        p = self.per_model[i]
        if p.density >= 1 or numel == 0:
            return None
        if p.density <= 0:
            return 0, 0
        if self.params.sparsify == "magnitude":
            return max(1, int(p.density * numel)), 0
        target = int(p.density * numel)
        top = int(p.gamma * numel)
        bottom = max(0, numel - target - top)
        return numel - bottom, max(0, numel - bottom - target)

    def _cutoffs(self, i: int, stream, numel: int) -> Kept | None:
        ranks = self._kept_ranks(i, numel)
        if ranks is None:
            return None
        keep, drop = top_k_cutoffs(stream, ranks, numel)
        return Kept(keep, drop)

    def _keep(
        self, i: int, magnitudes: np.ndarray, ctx: TensorContext, cut: Kept | None
    ) -> np.ndarray | None:
        """Boolean keep-mask of model i's chunk, or None when all is kept."""
        mode = self.params.sparsify
        if mode == "random":
            density = self.per_model[i].density
            if density >= 1:
                return None
            return self._random_keep(i, ctx, magnitudes.size, density)
        if cut is None:
            return None
        position = ctx.start + (ctx.model_offset if self.params.scope == "model" else 0)
        keep = cut.keep.mask(magnitudes, position)
        if cut.drop != Cutoff.keep_none():
            keep &= ~cut.drop.mask(magnitudes, position)
        return keep

    @staticmethod
    def _stat(ctx: TensorContext, i: int) -> ModelSelection:
        """Selection and norm rescale factor of model i for this tensor."""
        if isinstance(ctx.stats, TaskVectorTensorStats):
            return ctx.stats.models[i]
        if isinstance(ctx.model_stats, TaskVectorModelStats):
            return ModelSelection(ctx.model_stats.kept[i])
        return ModelSelection(None)

    def _random_keep(self, i: int, ctx: TensorContext, length: int, density: float) -> np.ndarray:
        """Bernoulli(density) keep-mask drawn in fixed blocks, so it is independent of chunking."""
        start, stop = ctx.start, ctx.start + length
        parts = []
        for block in range(start // RANDOM_BLOCK, (stop - 1) // RANDOM_BLOCK + 1 if length else 0):
            lo = block * RANDOM_BLOCK
            hi = min(lo + RANDOM_BLOCK, ctx.numel)
            gen = seeded_generator(self.params.seed, ctx.name, i, block)
            draw = gen.random(hi - lo, dtype=np.float32) < density
            parts.append(draw[max(start, lo) - lo : min(stop, hi) - lo])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    # -- statistics ----------------------------------------------------------------------

    def model_statistics(self, deltas: DeltaAccess) -> TaskVectorModelStats:
        cuts = []
        for i in range(deltas.n_models):

            def stream(i: int = i):
                for ctx, values in deltas.stream(i):
                    yield ctx.model_offset + ctx.start, np.abs(values, out=values)

            cuts.append(self._cutoffs(i, stream, deltas.total_numel))
        return TaskVectorModelStats(tuple(cuts))

    def tensor_statistics(self, ctx: TensorContext, deltas: DeltaAccess) -> TaskVectorTensorStats:
        # One model's whole task vector at a time: it is freed when _selection returns.
        return TaskVectorTensorStats(
            tuple(self._selection(i, ctx, deltas.tensor(i)) for i in range(deltas.n_models))
        )

    def _selection(self, i: int, ctx: TensorContext, delta: np.ndarray) -> ModelSelection:
        magnitudes = np.abs(delta.reshape(-1), out=delta.reshape(-1))
        if self._selects_top_k and self.params.scope == "tensor" and ctx.rounding is not None:
            ranks = self._kept_ranks(i, magnitudes.size)
            descending = self.params.sparsify == "magnitude"
            kept = (
                None if ranks is None else Kept(*torch_order_cutoffs(magnitudes, ranks, descending))
            )
        elif self._selects_top_k and self.params.scope == "tensor":
            kept = self._cutoffs(i, lambda: [(0, magnitudes)], magnitudes.size)
        elif isinstance(ctx.model_stats, TaskVectorModelStats):
            kept = ctx.model_stats.kept[i]
        else:
            kept = None
        scale = 1.0
        if self.params.rescale == "norm":
            keep = self._keep(i, magnitudes, ctx, kept)
            before = float(magnitudes.sum(dtype=np.float64))
            after = before if keep is None else float(magnitudes[keep].sum(dtype=np.float64))
            if ctx.rounding is not None:  # mergekit's sums and ratio are in its compute dtype
                before, after = _rounded(ctx, before), _rounded(ctx, after)
            scale = before / after if before >= NORM_EPS and after >= NORM_EPS else 1.0
            if ctx.rounding is not None:
                scale = _rounded(ctx, scale)
        return ModelSelection(kept, scale)

    # -- the merge -----------------------------------------------------------------------

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        length = tensors.shape[-1]
        # Random masks are drawn in whole RANDOM_BLOCKs: those chunks are merged at once.
        if tensors.ndim != 2 or length <= CACHE_BLOCK or self.params.sparsify == "random":
            return self._merge_block(tensors, base, ctx)
        out = np.empty_like(base)
        for lo in range(0, length, CACHE_BLOCK):
            hi = min(lo + CACHE_BLOCK, length)
            part = replace(ctx, start=ctx.start + lo)
            out[lo:hi] = self._merge_block(tensors[:, lo:hi], base[lo:hi], part)
        return out

    def _merge_block(self, tensors: np.ndarray, base: np.ndarray, ctx: TensorContext) -> np.ndarray:
        p = self.params
        # ctx.round: where mergekit's code, working in a float16/bfloat16 compute dtype,
        # rounds (--compat mergekit); a no-op otherwise.
        deltas = ctx.round(np.subtract(tensors, base, out=tensors))
        if p.sparsify != "none":
            scratch = np.empty_like(deltas[0])
            for i in range(deltas.shape[0]):
                selection = self._stat(ctx, i)
                scale = selection.scale
                keep = self._keep(i, np.abs(deltas[i], out=scratch), ctx, selection.kept)
                if keep is not None:
                    np.multiply(deltas[i], keep, out=deltas[i])
                if p.rescale == "inverse" and 0 < self.per_model[i].density < 1:
                    deltas[i] /= deltas.dtype.type(self.per_model[i].density)
                elif p.rescale == "norm" and scale != 1.0:
                    deltas[i] *= deltas.dtype.type(scale)
                ctx.round(deltas[i])
        w = ctx.round(self.weights(deltas))
        if np.any(w != 1):
            ctx.round(np.multiply(deltas, w, out=deltas))
        if p.consensus != "none":
            # Elected sign per element: +1 where the vote (sum of values, or of signs) is >= 0.
            vote = deltas.sum(axis=0) if p.consensus == "sum" else np.sign(deltas).sum(axis=0)
            elected = (vote >= 0).astype(deltas.dtype)
            elected *= 2
            elected -= 1
            # tau_i * elected > 0 exactly where tau_i is nonzero and agrees with the election.
            np.multiply(deltas, elected, out=deltas)
            agree = deltas > 0
            if p.normalize:
                divisor = ctx.round(self._agreeing_weight(agree, w))
            # Agreeing values (as magnitudes), others +0: maximum against an array is the
            # fast loop; against the scalar 0 it is twice as slow, with the same result.
            np.maximum(deltas, np.zeros_like(elected), out=deltas)
            mixed = ctx.round(deltas.sum(axis=0))
            mixed *= elected
            if p.normalize:
                ctx.round(np.divide(mixed, divisor, out=mixed))
        else:
            mixed = ctx.round(deltas.sum(axis=0))
            if p.normalize:
                divisor = ctx.round(w.sum(keepdims=True)).reshape(())
                mixed /= divisor if abs(divisor) >= 1e-8 else np.ones_like(divisor)
                ctx.round(mixed)
        if p.lambda_ != 1:
            ctx.round(np.multiply(mixed, deltas.dtype.type(p.lambda_), out=mixed))
        mixed += base
        return mixed

    @staticmethod
    def _agreeing_weight(agree: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Per element, the sum of the weights of the models agreeing with the election
        (1 where none does): a count when every weight is 1."""
        dtype = w.dtype
        if np.all(w == 1) and agree.shape[0] < 256:
            counts = np.add.reduce(agree.view(np.uint8), axis=0, dtype=np.uint8)
            np.maximum(counts, 1, out=counts)
            return counts.astype(dtype)
        divisor = np.zeros(agree.shape[1:], dtype=dtype)
        for i in range(agree.shape[0]):
            divisor += agree[i] if w[i] == 1 else agree[i] * w[i]
        divisor[divisor == 0] = 1
        return divisor


def _rounded(ctx: TensorContext, value: float) -> float:
    """One number rounded as ``ctx.round`` rounds arrays."""
    return float(ctx.round(np.array([value], dtype=np.float32))[0])


SUMS = "task vectors add up (normalize=false by default): n identical models give base + n*tau"


class TiesParams(TaskVectorParams):
    normalize: bool = True
    sparsify: Literal["none", "magnitude", "random", "outliers"] = "magnitude"
    consensus: Literal["none", "sum", "count"] = "sum"


class DareParams(TaskVectorParams):
    sparsify: Literal["none", "magnitude", "random", "outliers"] = "random"
    rescale: Literal["none", "inverse", "norm"] = "inverse"


class DareTiesParams(DareParams):
    consensus: Literal["none", "sum", "count"] = "sum"


class BreadcrumbsParams(TaskVectorParams):
    sparsify: Literal["none", "magnitude", "random", "outliers"] = "outliers"


class BreadcrumbsTiesParams(BreadcrumbsParams):
    consensus: Literal["none", "sum", "count"] = "sum"


@register
class TaskArithmetic(TaskVectorMerge):
    """theta = theta_base + lambda * sum_i w_i (theta_i - theta_base) (Ilharco et al. 2023)."""

    name = "task_arithmetic"
    summary = "base plus lambda times the weighted sum of task vectors"
    reference = "https://arxiv.org/abs/2212.04089"
    identical_inputs_give_input = False
    identical_inputs_reason = SUMS


@register
class Ties(TaskVectorMerge):
    """TIES-Merging (Yadav et al. 2023): keep the top-density |tau| of each task vector, elect
    a sign per element by mass, average the agreeing values (disjoint mean), scale by lambda.
    Top-k per tensor by default (mergekit); ``scope=model`` for the paper's whole-model top-k."""

    name = "ties"
    summary = "trim, elect sign, disjoint merge"
    reference = "https://arxiv.org/abs/2306.01708"
    Params = TiesParams


@register
class Dare(TaskVectorMerge):
    """DARE (Yu et al. 2024): drop each task-vector element with probability p = 1 - density,
    rescale survivors by 1/(1-p), then task arithmetic (``consensus=sum`` adds TIES's sign
    election, as ``dare_ties``). Seeded: the same seed gives the same masks."""

    name = "dare"
    summary = "random drop and rescale of task vectors, then task arithmetic"
    reference = "https://arxiv.org/abs/2311.03099"
    Params = DareParams
    identical_inputs_give_input = False
    identical_inputs_reason = SUMS


@register
class DareLinear(Dare):
    """mergekit's name for DARE on task arithmetic (same as ``dare``)."""

    name = "dare_linear"


@register
class DareTies(TaskVectorMerge):
    """DARE masks and rescaling, then TIES sign election (mergekit's ``dare_ties``)."""

    name = "dare_ties"
    summary = "DARE drop/rescale with TIES sign election"
    reference = "https://arxiv.org/abs/2311.03099"
    Params = DareTiesParams
    identical_inputs_give_input = False
    identical_inputs_reason = SUMS


@register
class Breadcrumbs(TaskVectorMerge):
    """Model Breadcrumbs (Davari & Belilovsky 2024): drop the largest gamma fraction (outliers)
    and the smallest values of each task vector, keeping a density fraction in between."""

    name = "breadcrumbs"
    summary = "drop outliers and small values of task vectors, then task arithmetic"
    reference = "https://arxiv.org/abs/2312.06795"
    Params = BreadcrumbsParams
    identical_inputs_give_input = False
    identical_inputs_reason = SUMS


@register
class BreadcrumbsTies(TaskVectorMerge):
    """Breadcrumbs masks with TIES sign election (mergekit's ``breadcrumbs_ties``)."""

    name = "breadcrumbs_ties"
    summary = "Breadcrumbs masks with TIES sign election"
    reference = "https://arxiv.org/abs/2312.06795"
    Params = BreadcrumbsTiesParams
    identical_inputs_give_input = False
    identical_inputs_reason = SUMS
