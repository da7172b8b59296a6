"""The files that make a merged folder a model Hugging Face loads, beside its tensors.

A merge of Hugging Face model folders writes, as mergekit does, the architecture's
``config.json`` (and ``generation_config.json``) of the base model, or of the first model
when the base has none, and the tokenizer files of ``tokenizer_source`` (``base``, or a
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


def _layer_count(raw: bytes, source: Path, layers: int) -> tuple[bytes, str]:
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise MergeError(f"{source}/config.json: not JSON ({exc})") from None
    keys = [k for k in LAYER_KEYS if k in config] if isinstance(config, dict) else []
    if not keys:
        raise MergeError(
            f"{source}/config.json: no layer count ({', '.join(LAYER_KEYS)}) to set to the "
            f"{layers} stacked layers"
        )
    was = config[keys[0]]
    for k in keys:
        config[k] = layers
    text = json.dumps(config, indent=2) + "\n"
    return text.encode(), f"config.json: {keys[0]} {was} -> {layers} (the stacked slices)"


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
) -> tuple[dict[str, bytes], list[str]]:
    """The files to write beside a folder output (name -> bytes) and notes on where they
    came from, or why there are none. ``layers``: the output's layer count (stacked
    slices), written into the config's layer-count key."""
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
        if layers is not None:
            files["config.json"], note = _layer_count(files["config.json"], source, layers)
            notes.append(note)
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
