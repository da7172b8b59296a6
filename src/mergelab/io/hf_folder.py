"""The files that make a merged folder a model Hugging Face loads, beside its tensors.

A merge of Hugging Face model folders writes, as mergekit does, the architecture's
``config.json`` (and ``generation_config.json``) of the base model, or of the first model
when the base has none (the output's dtype, when given, and the layer count of stacked
slices set in it), and the tokenizer files of ``tokenizer_source`` (``base``, or a
model's path; default: where the config came from) unless told not to; ``chat_template``
(a Jinja template, or ``chatml``) goes into ``tokenizer_config.json``. The files are read
from the inputs as bytes and staged with the tensors, so they appear with the model or not
at all; the recipe record lists them, which is what lets ``--force`` replace them later
(:func:`mergelab.io.output.written_by_mergelab`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergelab.errors import MergeError
from mergelab.io.dtypes import TORCH_NAMES, parse_dtype

__all__ = ["CHATML", "CONFIG_FILES", "TOKENIZER_FILES", "companion_files"]

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The ChatML template (the one named template mergelab writes; others: give the Jinja)."""
MAX_FILE_BYTES = 512 * 1024**2


def _folder(path: str | None) -> Path | None:
    """``path`` when it is a model folder (holding a config.json), else None."""
    if path is None:
        return None
    p = Path(path)
    return p if p.is_dir() and (p / "config.json").is_file() else None


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise MergeError(f"{path}: {size} bytes; a config or tokenizer file is smaller")
        return path.read_bytes()
    except OSError as exc:
        raise MergeError(f"{path}: cannot read ({exc.strerror})") from None


LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
"""Where a config keeps its layer count (Llama and most decoders, GPT-2, others)."""
TEXT_CONFIGS = ("text_config", "llm_config", "language_config")
"""Where a multimodal config nests its language model's config (LLaVA, Gemma 3, Mistral 3;
InternVL; DeepSeek-VL), whose layer count is the one to set when the top level has none."""


def _layer_keys(config: object) -> tuple[dict[str, Any], list[str], str]:
    """The (sub-)config holding the layer count, its layer-count keys, and its dotted
    prefix: the top level's keys, else those of the nested text config."""
    if not isinstance(config, dict):
        return {}, [], ""
    keys = [k for k in LAYER_KEYS if k in config]
    if keys:
        return config, keys, ""
    for sub in TEXT_CONFIGS:
        inner = config.get(sub)
        if isinstance(inner, dict) and (keys := [k for k in LAYER_KEYS if k in inner]):
            return inner, keys, f"{sub}."
    return {}, [], ""


DTYPE_KEYS = ("dtype", "torch_dtype")
"""Where a config names its weights' dtype (transformers 5 writes ``dtype``, 4 ``torch_dtype``;
both read either)."""


def parse_config(raw: bytes, source: Path) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise MergeError(f"{source}/config.json: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise MergeError(f"{source}/config.json: not a JSON object")
    return config


def _set_layers(config: dict[str, Any], source: Path, layers: int) -> str:
    """Set the layer count (top level, else the nested text config's) to ``layers``."""
    holder, keys, prefix = _layer_keys(config)
    if not keys:
        raise MergeError(
            f"{source}/config.json: no layer count ({', '.join(LAYER_KEYS)}, at the top or "
            f"in {', '.join(TEXT_CONFIGS)}) to set to the {layers} stacked layers"
        )
    was = holder[keys[0]]
    for k in keys:
        holder[k] = layers
    return f"config.json: {prefix}{keys[0]} {was} -> {layers} (the stacked slices)"


def _set_dtype(config: dict[str, Any], dtype: str) -> str | None:
    """Name ``dtype`` as the weights' dtype, as mergekit does (its ``torch_dtype``: the
    recipe's ``out_dtype`` or ``dtype``), so transformers loads the weights in it; None
    when the config already says so."""
    try:
        name = TORCH_NAMES[parse_dtype(dtype)]
    except (KeyError, ValueError) as exc:
        raise MergeError(f"dtype: {exc}") from None
    keys = [k for k in DTYPE_KEYS if k in config] or ["torch_dtype"]
    was = config.get(keys[0])
    if all(config.get(k) == name for k in keys):
        return None
    for k in keys:
        config[k] = name
    return f"config.json: {keys[0]} {was} -> {name} (the output's dtype)"


def _edit_config(
    raw: bytes, source: Path, layers: int | None, dtype: str | None
) -> tuple[bytes, list[str]]:
    """``config.json`` with the output's layer count and dtype, and notes on what changed
    (the bytes as read when nothing did)."""
    if layers is None and dtype is None:
        return raw, []
    config = parse_config(raw, source)
    notes = [_set_layers(config, source, layers)] if layers is not None else []
    if dtype is not None and (note := _set_dtype(config, dtype)) is not None:
        notes.append(note)
    if not notes:
        return raw, []
    return (json.dumps(config, indent=2) + "\n").encode(), notes


def _template(value: str) -> str:
    if value == "chatml":
        return CHATML
    if "{{" in value or "{%" in value:
        return value
    raise MergeError(
        f"chat_template: {value!r} is neither a Jinja template nor 'chatml' (for another "
        f"named template, give its Jinja text)"
    )


def companion_files(
    base: str | None,
    models: list[str],
    *,
    tokenizer_source: str | None = None,
    chat_template: str | None = None,
    copy_tokenizer: bool = True,
    layers: int | None = None,
    dtype: str | None = None,
) -> tuple[dict[str, bytes], list[str]]:
    """The files to write beside a folder output (name -> bytes) and notes on where they
    came from, or why there are none. ``layers``: the output's layer count (stacked
    slices), written into the config's layer-count key; ``dtype``: the output's dtype
    (the recipe's ``out_dtype`` or ``dtype``), written into the config's dtype."""
    source = _folder(base) or next((f for f in map(_folder, models) if f is not None), None)
    files: dict[str, bytes] = {}
    notes: list[str] = []
    if source is None:
        notes.append(
            "no input is a model folder with a config.json: the output holds the tensors and "
            "the recipe record only"
        )
    else:
        for name in CONFIG_FILES:
            if (source / name).is_file():
                files[name] = _read(source / name)
        notes.append(f"{', '.join(files)} copied from {source}")
        if "config.json" in files:
            files["config.json"], edits = _edit_config(files["config.json"], source, layers, dtype)
            notes += edits
    tok = source
    if tokenizer_source is not None:
        if tokenizer_source == "base":
            if base is None:
                raise MergeError("tokenizer_source: base, but the recipe has no base_model")
            tok = Path(base)
        elif tokenizer_source == "union":
            raise MergeError(
                "tokenizer_source: union (a merged vocabulary) is not supported; give base "
                "or a model's path"
            )
        else:
            tok = Path(tokenizer_source)
        if not tok.is_dir():
            raise MergeError(f"tokenizer_source: {tok} is not a folder")
    if copy_tokenizer and tok is not None:
        found = [n for n in TOKENIZER_FILES if (tok / n).is_file()]
        for name in found:
            files[name] = _read(tok / name)
        if found:
            notes.append(f"tokenizer copied from {tok}: {', '.join(found)}")
        elif tokenizer_source is not None:
            raise MergeError(f"tokenizer_source: {tok} holds no tokenizer file")
    if chat_template is not None:
        config: dict[str, Any] = {}
        if "tokenizer_config.json" in files:
            try:
                config = json.loads(files["tokenizer_config.json"])
            except ValueError as exc:
                raise MergeError(f"{tok}/tokenizer_config.json: not JSON ({exc})") from None
        config["chat_template"] = _template(chat_template)
        files["tokenizer_config.json"] = (json.dumps(config, indent=2) + "\n").encode()
        notes.append("chat_template written into tokenizer_config.json")
    return files, notes
