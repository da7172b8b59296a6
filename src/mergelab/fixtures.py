"""Synthetic checkpoints with the tensor names and shapes of a Llama-style model.

Used by the merge demo and the merge benchmark: a base and N fine-tunes (base plus small
Gaussian noise), written as Hugging Face folders (``config.json`` + ``model.safetensors``).
Seeded: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mergelab.atomic import atomic_write_text
from mergelab.io import save_state_dict


def llama_shapes(hidden: int, layers: int, intermediate: int, vocab: int) -> dict[str, tuple]:
    """Parameter names and shapes of a Llama decoder with untied embeddings."""
    shapes: dict[str, tuple] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (hidden, hidden)
        shapes[f"{p}mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def write_llama_fixture(
    root: str | Path,
    *,
    hidden: int = 1024,
    layers: int = 8,
    intermediate: int = 2816,
    vocab: int = 32000,
    finetunes: int = 4,
    noise: float = 0.002,
    seed: int = 0,
) -> list[Path]:
    """Write ``root/base`` and ``root/ft1..ftN``; reuse them if already complete."""
    root = Path(root)
    folders = [root / "base", *(root / f"ft{i + 1}" for i in range(finetunes))]
    if all((f / "model.safetensors").is_file() for f in folders):
        return folders
    shapes = llama_shapes(hidden, layers, intermediate, vocab)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 64),
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "float32",
        "max_position_embeddings": 2048,
        "hidden_act": "silu",
    }
    rng = np.random.default_rng(seed)
    base = {
        name: np.ones(shape, np.float32)
        if "norm" in name
        else rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        for name, shape in shapes.items()
    }
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
        state = (
            base
            if k == 0
            else {
                name: value + rng.standard_normal(value.shape, dtype=np.float32) * np.float32(noise)
                for name, value in base.items()
            }
        )
        save_state_dict(state, folder / "model.safetensors", force=True)
        del state
    return folders
