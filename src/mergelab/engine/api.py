"""The public entry points: merge files on disk, merge state dicts in memory, open a recipe,
check an output location (the dry run)."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mergelab.engine.execute import MemorySink, execute
from mergelab.engine.plan import MergePlan, _listing, build_plan, method_class
from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint, TensorInfo
from mergelab.io.open import open_checkpoint
from mergelab.io.output import WROTE_MARK
from mergelab.io.writer import SafetensorsWriter, check_output, is_file_output
from mergelab.recipe import Recipe

DEFAULT_SHARD_BYTES = 5 * 1024**3


def versions() -> dict[str, str]:
    from mergelab import __version__

    return {
        "mergelab": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def open_recipe(recipe: Recipe) -> MergePlan:
    """Open the recipe's checkpoints (headers only) and plan the merge."""
    options = {"key": recipe.key, "strip_prefix": recipe.strip_prefix}
    base_path = recipe.base_model
    entries = list(recipe.models)
    notes = recipe.notes
    if base_path is not None and method_class(recipe.merge_method).base_policy in (
        "required",
        "optional",
    ):
        # As in mergekit, the base listed among the models is the base, not another input
        # (where the method reads a base: an ignored one leaves the models as listed).
        same = [e for e in entries if Path(e.model).resolve() == Path(base_path).resolve()]
        if same:
            entries = [e for e in entries if e not in same]
            notes.append(f"{base_path} is the base; not merged again as a model")
            if not entries:
                raise MergeError(
                    f"{base_path} is the base and the only model; list the models to merge "
                    f"besides it"
                )
    vocab = _recipe_vocabulary(recipe)
    base = open_checkpoint(base_path, **options) if base_path is not None else None
    models = [open_checkpoint(e.model, **options) for e in entries]
    spare = None
    if vocab is not None:
        models, base, spare = _vocabulary_views(recipe, vocab, entries, models, base, notes)
    plan = build_plan(
        recipe.merge_method,
        models,
        base,
        params=dict(recipe.parameters),
        model_params=[dict(e.parameters) for e in entries],
        dtype=recipe.output_dtype,
        recipe=recipe,
    )
    plan.notes += notes
    if base is not None and plan.base is None:
        base.close()  # the method ignores the base: its header was checked, nothing more
    if spare is not None:
        spare.close()
    return plan


def _recipe_vocabulary(recipe: Recipe) -> Any:
    """The recipe's merged vocabulary (:mod:`mergelab.engine.vocab`), or None."""
    if recipe.tokenizer is None and recipe.tokenizer_source is None:
        return None
    from mergelab.engine.vocab import recipe_vocabulary

    return recipe_vocabulary(recipe)


def _vocabulary_views(
    recipe: Recipe, vocab: Any, entries: list[Any], models: list[Any], base: Any, notes: list[str]
) -> tuple[list[Any], Any, Any]:
    """The models and base seen through the merged vocabulary, and the base when it only
    serves the vocabulary (listed among the models of a method that reads no base, as
    mergekit's tests write linear merges): then not passed to the plan, closed after."""
    from mergelab.engine.vocab import recipe_views

    pairs = [(e.model, m) for e, m in zip(entries, models, strict=True)]
    if base is not None:
        pairs.append((str(recipe.base_model), base))
    views, more = recipe_views(recipe, vocab, pairs)
    notes += more
    models = views[: len(entries)]
    base = views[len(entries)] if base is not None else None
    listed = {Path(e.model).resolve() for e in entries}
    if (
        base is not None
        and method_class(recipe.merge_method).base_policy == "unused"
        and Path(str(recipe.base_model)).resolve() in listed
    ):
        notes.append(
            f"{recipe.base_model}: base of the merged vocabulary; merged as a model "
            f"({recipe.merge_method} reads no base)"
        )
        return models, None, base
    return models, base, None


def _absolute(recipe: Recipe) -> Recipe:
    """The recipe with every model path absolute."""

    def entry(e: Any) -> Any:
        return e.model_copy(update={"model": str(Path(e.model).resolve())})

    return recipe.model_copy(
        update={
            "models": [entry(e) for e in recipe.models],
            "slices": None
            if recipe.slices is None
            else [
                sl.model_copy(
                    update={
                        "sources": [entry(s) for s in sl.sources],
                        "base_model": None
                        if sl.base_model is None
                        else str(Path(sl.base_model).resolve()),
                    }
                )
                for sl in recipe.slices
            ],
            "base_model": None
            if recipe.base_model is None
            else str(Path(recipe.base_model).resolve()),
        }
    )


def _record(plan: MergePlan) -> tuple[Recipe, dict[str, str]]:
    """The recipe with absolute paths and resolved parameters, as stored with the output."""
    assert plan.recipe is not None
    recipe = _absolute(plan.recipe)
    metadata = {
        "mergelab.recipe": json.dumps(recipe.model_dump(exclude_defaults=True), sort_keys=True),
        "mergelab.method_params": json.dumps(plan.method.params.model_dump(by_alias=True)),
        "mergelab.versions": json.dumps(versions(), sort_keys=True),
    }
    return recipe, metadata


def _recipe_name(out: str | Path) -> str:
    """The recipe record: ``NAME.mergelab.yaml`` beside a file, else ``mergelab.yaml``."""
    return f"{Path(out).stem}.mergelab.yaml" if is_file_output(out) else "mergelab.yaml"


def _input_paths(plan: MergePlan) -> list[Path]:
    """Every path the merge reads: as the recipe gives them, and the files behind them."""
    paths = [Path(p) for ckpt in plan.inputs for p in ckpt.files]
    if plan.recipe is not None:
        paths += [Path(m) for m in plan.recipe.inputs]
        if plan.recipe.base_model is not None:
            paths.append(Path(plan.recipe.base_model))
    return paths


def open_plans(recipe: Recipe) -> tuple[list[MergePlan], int | None]:
    """The plans of a recipe: one (``models``), or one per layer slice and for the tensors
    outside the layers (``slices``: :mod:`mergelab.engine.slices`), and the output's layer
    count when slices set it."""
    if recipe.models and recipe.slices:
        raise MergeError("give either models or slices (exactly one of them), not both")
    if not recipe.slices:
        return [open_recipe(recipe)], None
    if _recipe_vocabulary(recipe) is not None:
        raise MergeError(
            "slices: not supported with a merged vocabulary (tokenizer, tokenizer_source: "
            "union, or tokenizers that differ); give models instead of slices"
        )
    from mergelab.engine.slices import plan_slices

    plans, layers = plan_slices(recipe, {"key": recipe.key, "strip_prefix": recipe.strip_prefix})
    plans[0].notes = [*recipe.notes, *plans[0].notes]
    plans[0].notes.append(
        f"{len(recipe.slices)} slices stacked into {layers} layers; "
        f"{len(plans)} plans (slices, then the tensors outside the layers)"
    )
    return plans, layers


def companions(
    recipe: Recipe, out: str | Path, *, copy_tokenizer: bool = True, layers: int | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """The config and tokenizer files a folder output gets beside its tensors
    (:mod:`mergelab.io.hf_folder`), and notes on them; none for a single-file output."""
    if is_file_output(out):
        asked = [
            k for k in ("tokenizer_source", "tokenizer", "chat_template") if getattr(recipe, k)
        ]
        if asked:
            raise MergeError(
                f"{', '.join(asked)}: written only into a folder output (--out DIR); "
                f"{out} is a single .safetensors file"
            )
        return {}, []
    from mergelab.io.hf_folder import companion_files
    from mergelab.io.output import written_by_mergelab

    vocab = _recipe_vocabulary(recipe)
    if vocab is not None and not copy_tokenizer:
        raise MergeError(
            "--no-copy-tokenizer: the vocabulary is merged (tokenizer_source / tokenizer:), so "
            "the merged rows follow a tokenizer no input has: leave the option out"
        )
    files, notes = companion_files(
        recipe.base_model,
        recipe.inputs,
        tokenizer_source=recipe.tokenizer_source if vocab is None else None,
        chat_template=recipe.chat_template if vocab is None else None,
        copy_tokenizer=copy_tokenizer and vocab is None,
        layers=layers,
        dtype=recipe.output_dtype,
    )
    if vocab is not None:
        from mergelab.io.tokenizer_merge import merged_companions

        files, notes = merged_companions(vocab, files, notes, recipe.chat_template)
    folder = Path(out)
    theirs = [n for n in files if (folder / n).exists() and not written_by_mergelab(folder / n)]
    if theirs:
        notes.append(
            f"kept {', '.join(theirs)} already in {folder} (not written by mergelab, so never "
            f"replaced; the inputs' copies were not written)"
        )
        files = {n: b for n, b in files.items() if n not in theirs}
    return files, notes


def merge(
    recipe: Recipe | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_bytes: int | None = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    copy_tokenizer: bool = True,
) -> Path:
    """Merge checkpoints on disk into ``out`` (a ``.safetensors`` file or a model folder).

    The output appears only when complete; an existing one is replaced only with ``force``.
    A ``mergelab.yaml`` (``<name>.mergelab.yaml`` beside a single file) records the recipe.
    A folder output of Hugging Face model folders also gets their config and tokenizer
    (:func:`companions`; ``copy_tokenizer=False`` leaves the tokenizer out).
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    plans, layers = open_plans(recipe)
    plan = plans[0]
    # What was accepted and ignored, or read differently from mergekit (the recipe's and
    # the plans' notes; all of them also go into the recipe record).
    for note in dict.fromkeys([*recipe.notes, *(n for p in plans for n in p.notes)]):
        print(f"mergelab: note: {note}", file=sys.stderr)
    try:
        files, file_notes = companions(recipe, out, copy_tokenizer=copy_tokenizer, layers=layers)
        record, metadata = _record(plan)
        header = "".join(f"# {k} {v}\n" for k, v in versions().items())
        header += "".join(f"# note: {n}\n" for n in [*plan.notes, *file_notes])
        header += "".join(f"{WROTE_MARK}{name}\n" for name in files)
        yaml_name = _recipe_name(out)
        out = Path(out)
        infos = [TensorInfo(t.name, t.shape, t.out_dtype) for p in plans for t in p.tensors]
        writer = SafetensorsWriter(
            out,
            infos,
            metadata=metadata,
            max_shard_bytes=max_shard_bytes,
            force=force,
            extra_files={yaml_name: record.to_yaml(header), **files},
            inputs=[path for p in plans for path in _input_paths(p)],
        )
        for note in file_notes:
            if note.startswith("kept "):
                print(f"mergelab: note: {note}", file=sys.stderr)
        try:
            differing = [name for p in plans for name in execute(p, writer, progress=progress)]
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if differing:
            print(
                f"mergelab: note: {len(differing)} integer tensor(s) differ between the models "
                f"and were copied from {plan.models[0].label} (integers are never averaged): "
                f"{_listing(differing)}",
                file=sys.stderr,
            )
    finally:
        for p in plans:
            for ckpt in p.inputs:
                ckpt.close()
    return out


def merge_state_dicts(
    method: str,
    models: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    dtype: str | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Merge in-memory state dicts (torch tensors or NumPy arrays) with the same checks and
    code path as files. Returns torch tensors if the inputs were torch tensors. ``labels``
    name the models in errors (their files, say); default ``model 1``, ``model 2``, ..."""
    names = list(labels) if labels is not None else [f"model {i + 1}" for i in range(len(models))]
    checkpoints = [ArrayCheckpoint(sd, name) for sd, name in zip(models, names, strict=True)]
    base_ckpt = None if base is None else ArrayCheckpoint(base, "base")
    plan = build_plan(
        method, checkpoints, base_ckpt, params=params, model_params=model_params, dtype=dtype
    )
    sink = MemorySink(plan)
    execute(plan, sink, progress=False)
    arrays = {t.name: sink.arrays[t.name].reshape(t.shape) for t in plan.tensors}
    first = next(iter(models[0].values()), None)
    if first is None or isinstance(first, np.ndarray):
        return arrays
    import torch

    from mergelab.io.dtypes import to_torch

    return {
        t.name: torch.from_numpy(arrays[t.name]).view(to_torch(t.out_dtype)) for t in plan.tensors
    }


def check_plan_output(
    plan: MergePlan | Sequence[MergePlan],
    out: str | Path,
    *,
    force: bool,
    max_shard_bytes: int | None,
    copy_tokenizer: bool = True,
    layers: int | None = None,
) -> list[str]:
    """The files a merge into ``out`` would write (of one plan, or of a recipe's plans:
    :func:`open_plans`), after every check the real run makes (an input in the way, a file
    mergelab did not write); nothing is touched."""
    plans = [plan] if isinstance(plan, MergePlan) else list(plan)
    first = plans[0]
    infos = [TensorInfo(t.name, t.shape, t.out_dtype) for p in plans for t in p.tensors]
    files: dict[str, bytes] = {}
    if first.recipe is not None:
        files, notes = companions(first.recipe, out, copy_tokenizer=copy_tokenizer, layers=layers)
        first.notes += [n for n in notes if n not in first.notes]
    return check_output(
        out,
        infos,
        max_shard_bytes=max_shard_bytes,
        force=force,
        extra_names=[_recipe_name(out), *files],
        inputs=[path for p in plans for path in _input_paths(p)],
    )
