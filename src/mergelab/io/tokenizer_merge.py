"""mergekit's tokenizer merging: the output vocabulary and, per input model, where each
output token's row comes from.

``tokenizer_source: union`` (or ``tokenizer: {source: union}``) builds the union of every
model's used tokens on top of the base model's tokenizer; ``base`` or a model's path takes
that tokenizer (the base's stripped of tokens past its ``vocab_size``); ``tokens:`` adds
tokens and says where their rows come from (``source``: a model, ``{kind: zero}`` or
``{kind: model_token, model, token | token_id}``; ``force``: even for models that have
them); ``pad_to_multiple_of`` pads the output vocabulary. This module ports mergekit
0.1.5's ``mergekit/tokenizer/build.py`` (the tokenizer and the permutations) with
``transformers``, imported only here and only when a recipe asks for a merged
vocabulary; :mod:`mergelab.engine.vocab` applies the permutations to the tensors.

Where mergekit depends on set order (the union's order of the models after the base)
mergelab takes the recipe's order, so the output is the same on every run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)

from mergelab.errors import MergeError
from mergelab.io.hf_folder import TOKENIZER_FILES, parse_config

__all__ = [
    "ModelTokenSource",
    "TokenSetting",
    "TokenizerSettings",
    "VocabularyMerge",
    "ZeroSource",
    "build_vocabulary",
    "merged_companions",
    "same_tokenizers",
    "set_vocab_size",
    "tokenizer_files",
    "tokenizer_problems",
]

INSTALL = (
    "tokenizer merging needs transformers, which is not installed: "
    "pip install 'mergelab[hf]' (or pip install transformers)"
)


# -- the recipe's ``tokenizer:`` section (mergekit's TokenizerConfig) -----------------------


class ModelTokenSource(BaseModel):
    """The row of one token (by text or id, in that model's own vocabulary) of a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["model_token"]
    model: str
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ModelTokenSource:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of token_id or token")
        return self


class ZeroSource(BaseModel):
    """A row of zeros."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["zero"]


class TokenSetting(BaseModel):
    """Where one token's row comes from; ``force``: also for models that have the token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Annotated[ModelTokenSource | ZeroSource, Field(discriminator="kind")] | str | None = (
        None
    )
    force: bool = False


class TokenizerSettings(BaseModel):
    """mergekit's ``tokenizer:`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = "union"
    """``union``, ``base`` or a model's path."""
    tokens: dict[str, TokenSetting] | None = None
    pad_to_multiple_of: PositiveInt | None = None


SOURCE_HELP = (
    "a model's path, {kind: zero} or {kind: model_token, model: PATH, token: TEXT} (or token_id: N)"
)


def tokenizer_problems(data: dict[str, Any]) -> list[str]:
    """Every problem of a raw recipe's ``tokenizer`` section (and of giving it with
    ``tokenizer_source``), each naming its field, for the recipe's one-line error."""
    section = data.get("tokenizer")
    if section is None:
        return []
    problems = []
    if data.get("tokenizer_source") is not None:
        problems.append("tokenizer: give either tokenizer or tokenizer_source, not both")
    try:
        TokenizerSettings.model_validate(section)
    except ValidationError as exc:
        tokens = section.get("tokens") if isinstance(section, dict) else None
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            msg = err["msg"].removeprefix("Value error, ")
            if len(loc) >= 3 and loc[0] == "tokens" and loc[2] == "source":
                value = (tokens or {}).get(loc[1], {}).get("source")
                kind = value.get("kind") if isinstance(value, dict) else None
                where = f"tokenizer.tokens.{loc[1]}.source"
                if kind not in ("zero", "model_token"):
                    text = f"{where}: {SOURCE_HELP}"
                elif kind not in loc[3:]:
                    continue  # the other alternatives' complaints
                else:
                    rest = loc[loc.index(kind, 3) + 1 :]
                    text = f"{where}{''.join('.' + p for p in rest)}: {msg}"
            else:
                text = f"tokenizer{''.join('.' + p for p in loc)}: {msg}"
            if text not in problems:
                problems.append(text)
    return problems


# -- the merged vocabulary ------------------------------------------------------------------


@dataclass
class VocabularyMerge:
    """The output tokenizer and, per model (its resolved path), the model's row of each
    output token (-1: the model lacks it)."""

    tokenizer: Any
    vocab: dict[str, int]
    size: int
    """Rows of every vocabulary tensor of the output: ``len(vocab)`` padded."""
    permutations: dict[str, np.ndarray]
    original_vocabs: dict[str, dict[str, int]]
    base: str
    notes: list[str] = field(default_factory=list)

    @property
    def identity(self) -> bool:
        """True when every model's rows stay where they are (nothing to permute)."""
        ids = np.arange(len(self.vocab))
        return self.size == len(self.vocab) and all(
            np.array_equal(p, ids) for p in self.permutations.values()
        )


def _transformers() -> Any:
    try:
        import tokenizers  # noqa: F401
        import transformers
    except ImportError:
        raise MergeError(INSTALL) from None
    return transformers


def key(path: str | Path) -> str:
    """How models are told apart: their resolved path."""
    return str(Path(path).resolve())


def config_vocab_size(folder: str | Path) -> int | None:
    """The vocabulary size a model's config.json gives (``text_config`` for vision-language
    configs), or None (mergekit's get_vocab_size, without a network)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for where in (config, config.get("text_config")):
        if isinstance(where, dict) and isinstance(where.get("vocab_size"), int):
            return where["vocab_size"]
    return None


def _tokenizer_files(path: str) -> list[str]:
    return [n for n in TOKENIZER_FILES if (Path(path) / n).is_file()]


def _load(transformers: Any, path: str, what: str) -> Any:
    present = _tokenizer_files(path)
    if not present:
        raise MergeError(
            f"{what}: {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)"
        )
    if present == ["tokenizer_config.json"] or (
        "tokenizer.json" not in present
        and not any(
            n in present for n in ("tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
        )
    ):
        raise MergeError(
            f"{what}: {path} has {', '.join(present)} but no vocabulary (tokenizer.json, "
            f"tokenizer.model, vocab.json or vocab.txt)"
        )
    try:
        return transformers.AutoTokenizer.from_pretrained(
            path, use_fast=True, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MergeError(
            f"{what}: cannot load the tokenizer of {path} from {', '.join(present)} ({first})"
        ) from None


def _stripped(transformers: Any, path: str, where: str) -> Any:
    """The base's tokenizer without tokens at ids >= its config's vocab_size (mergekit's
    get_stripped_tokenizer)."""
    import tokenizers

    tok = _load(transformers, path, where)
    size = config_vocab_size(path) or len(tok.get_vocab())
    unused = {t for t, i in tok.get_vocab().items() if i >= size}
    if not unused:
        return tok
    data = json.loads(tok._tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise MergeError(
            f"{where}: {path} has tokens past its vocab_size {size} and a "
            f"{data['model']['type']} tokenizer; only BPE ones can be stripped (as in mergekit)"
        )
    data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < size]
    for t in unused:
        data["model"]["vocab"].pop(t, None)

    def keep(merge: Any) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not any(p in unused for p in parts)

    data["model"]["merges"] = [m for m in data["model"]["merges"] if keep(m)]
    tok._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
    return tok


def _copy(transformers: Any, tok: Any) -> Any:
    """A fresh copy of a tokenizer (so adding tokens leaves the original alone)."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return transformers.AutoTokenizer.from_pretrained(
            tmp, use_fast=True, local_files_only=True, trust_remote_code=False
        )


def _union(transformers: Any, base_tok: Any, toks: dict[str, Any]) -> Any:
    """mergekit's build_union_tokenizer: the base's tokenizer plus every model's used
    tokens (plain ones, then added ones with their first model's settings)."""
    plain: dict[str, None] = {}
    added: dict[str, Any] = {}
    for model, tok in toks.items():
        size = config_vocab_size(model) or tok.vocab_size
        decoder = tok.added_tokens_decoder
        added_text = {info.content for info in decoder.values()}
        for t, i in tok.get_vocab().items():
            if i < size and t not in added_text:
                plain.setdefault(t)
        for i, info in decoder.items():
            if i < size:
                added.setdefault(info.content, info)
    out = _copy(transformers, base_tok)
    base_vocab = base_tok.get_vocab()
    for t in plain:
        if t not in added and t not in base_vocab:
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def build_vocabulary(
    base: str,
    models: Sequence[str],
    source: str,
    add_tokens: Sequence[str] = (),
    pad_to_multiple_of: int | None = None,
    where: str = "tokenizer_source",
) -> VocabularyMerge:
    """The output tokenizer and every model's permutation (mergekit's build_tokenizer).

    ``base``: the base model's folder (mergekit: base_model, else the first model);
    ``models``: every model the recipe names, base included, in the recipe's order;
    ``source``: ``union``, ``base`` or a model's folder; ``where``: the recipe's field, for
    errors."""
    transformers = _transformers()
    notes: list[str] = []
    base_key = key(base)
    toks: dict[str, Any] = {base_key: _stripped(transformers, base, where)}
    for path in models:
        if key(path) in toks:
            continue
        if not _tokenizer_files(path):  # mergekit's fallback, said (a bad one is an error)
            notes.append(f"{path}: no tokenizer files; its vocabulary is taken as {base}'s")
            continue
        toks[key(path)] = _load(transformers, path, where)
    if source == "union":
        out = _union(transformers, toks[base_key], toks)
    elif source == "base":
        out = _copy(transformers, toks[base_key])
    else:
        out = _load(transformers, source, where)
    existing = set(out.get_vocab())
    for t in add_tokens:
        if t not in existing:
            out.add_tokens(t)
            existing.add(t)
    vocab = dict(sorted(out.get_vocab().items(), key=lambda kv: kv[1]))
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise MergeError(f"{where}: {source}: its token ids are not 0..{len(vocab) - 1}")
    size = len(vocab)
    if pad_to_multiple_of and size % pad_to_multiple_of:
        size += pad_to_multiple_of - size % pad_to_multiple_of
    permutations = {}
    for path in models:
        k = key(path)
        model_vocab = (toks.get(k) or toks[base_key]).get_vocab()
        limit = config_vocab_size(path) or len(model_vocab)
        perm = np.full(len(vocab), -1, dtype=np.int64)
        past = []
        for t, i in vocab.items():
            j = model_vocab.get(t)
            if j is None:
                continue
            if j >= limit:
                past.append(t)  # mergekit: a missing entry (it fails); here: absent
                continue
            perm[i] = j
        if past:
            notes.append(
                f"{path}: {len(past)} output token(s) at ids past its vocab_size {limit} "
                f"(padding?) taken as absent: {', '.join(map(repr, past[:5]))}"
            )
        permutations[k] = perm
    return VocabularyMerge(
        tokenizer=out,
        vocab=vocab,
        size=size,
        permutations=permutations,
        original_vocabs={k: t.get_vocab() for k, t in toks.items()},
        base=base_key,
        notes=notes,
    )


# -- the files of the output ----------------------------------------------------------------


def tokenizer_files(merge: VocabularyMerge, chat_template: str | None) -> dict[str, bytes]:
    """The merged tokenizer's files as ``save_pretrained`` writes them (name -> bytes),
    with ``chat_template`` (already resolved to its Jinja text) set."""
    tok = merge.tokenizer
    if chat_template is not None:
        tok.chat_template = chat_template
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    if "tokenizer_config.json" in files:
        # transformers records where it loaded from; meaningless in the output
        config = json.loads(files["tokenizer_config.json"])
        for k in ("is_local", "local_files_only", "name_or_path"):
            config.pop(k, None)
        files["tokenizer_config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    return files


def set_vocab_size(raw: bytes, source: str, size: int) -> tuple[bytes, str]:
    """config.json with its vocabulary size (``text_config``'s for vision-language configs
    that keep it there) set to ``size``, and a note."""
    config = parse_config(raw, Path(source))
    where = config
    text = config.get("text_config")
    if "vocab_size" not in config and isinstance(text, dict) and "vocab_size" in text:
        where = text
    was = where.get("vocab_size")
    where["vocab_size"] = size
    out = (json.dumps(config, indent=2) + "\n").encode()
    return out, f"config.json: vocab_size {was} -> {size} (the merged vocabulary)"


def same_tokenizers(folders: Sequence[str]) -> bool:
    """True when the folders that hold tokenizer files hold the same ones, byte for byte,
    and their configs give the same vocab_size: the vocabularies are then identical,
    which needs no tokenizer library to tell."""
    seen: set[tuple] = set()
    sizes: set[int | None] = set()
    for folder in folders:
        p = Path(folder)
        if not p.is_dir():
            continue
        sizes.add(config_vocab_size(p))
        files = tuple(
            (name, (p / name).read_bytes()) for name in TOKENIZER_FILES if (p / name).is_file()
        )
        if files:
            seen.add(files)
    return len(seen) <= 1 and len(sizes) <= 1


def merged_companions(
    merge: VocabularyMerge, files: dict[str, bytes], notes: list[str], chat_template: str | None
) -> tuple[dict[str, bytes], list[str]]:
    """A folder output's companion files (:func:`mergelab.io.hf_folder.companion_files`,
    without tokenizer) plus the merged tokenizer's, config.json's vocab_size set."""
    from mergelab.io.hf_folder import _template

    template = _template(chat_template) if chat_template is not None else None
    files = dict(files)
    written = tokenizer_files(merge, template)
    files.update(written)
    notes = [*notes, f"tokenizer merged ({len(merge.vocab)} tokens): {', '.join(written)}"]
    if template is not None:
        notes.append("chat_template written with the merged tokenizer")
    if "config.json" in files:
        files["config.json"], note = set_vocab_size(files["config.json"], "config", merge.size)
        notes.append(note)
    return files, notes
