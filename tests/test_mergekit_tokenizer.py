"""Tokenizer merging through mergekit and mergelab: the configurations of mergekit's
tests/test_tokenizer.py (base, union, a model's tokenizer, slerp on a union, forced
tokens, model_token sources, pad_to_multiple_of) and a few that reach every default fill
(base row, mean, padding), on pico Llama models with different vocabularies built as
mergekit's tests build them. Both tools must give the same vocabulary, config vocab_size
and tensors (float32, 1e-6 of each tensor's largest value), and transformers must load
the output and its tokenizer. Needs mergekit (``pip install -e ".[bench]"``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_config = pytest.importorskip("mergekit.config")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from safetensors.numpy import load_file  # noqa: E402

from mergelab.cli import main  # noqa: E402

pytestmark = pytest.mark.mergekit


def make_tokenizer(vocab_size: int, added_tokens: list[str]) -> Any:
    """mergekit's tests/test_tokenizer.py make_tokenizer: a BPE vocabulary of
    ``<unk> <s> </s> _tok_3 ...`` plus ``added_tokens``."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"_tok_{i}" for i in range(3, vocab_size)]
    data = {
        "version": "1.0",
        "model": {
            "type": "BPE",
            "vocab": dict(zip(tokens, range(vocab_size), strict=True)),
            "merges": [],
        },
        "added_tokens": [],
    }
    tok = tokenizers.Tokenizer.from_str(json.dumps(data))
    with tempfile.TemporaryDirectory() as p:
        tok.save(os.path.join(p, "tokenizer.json"))
        out = transformers.LlamaTokenizerFast(tokenizer_file=os.path.join(p, "tokenizer.json"))
    out.add_tokens(added_tokens)
    return out


def make_picollama(path: Path, vocab_size: int, seed: int) -> str:
    """mergekit's tests/common.py make_picollama (seeded)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
        num_attention_heads=16, num_hidden_layers=2,
    )  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


IM = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def pico(tmp_path_factory) -> dict[str, str]:
    """mergekit's model_base (64), model_chatml (66: two added tokens), model_padded (64
    rows; its tokenizer has 4 unused tokens past them); and chatml2 (like chatml) and
    short (60 tokens) to reach the mean and base-row fills."""
    root = tmp_path_factory.mktemp("pico-tok")
    specs = {
        "base": (64, 64, []),
        "chatml": (66, 64, IM),
        "padded": (64, 64, [f"<UNUSED_{i}>" for i in range(4)]),
        "chatml2": (66, 64, IM),
        "short": (60, 60, []),
    }
    out = {}
    for seed, (name, (rows, vocab, added)) in enumerate(specs.items()):
        out[name] = make_picollama(root / name, rows, seed)
        make_tokenizer(vocab, added).save_pretrained(out[name])
    return out


def _recipe(
    models: list[str], base: str | None, method: str = "linear", **extra: Any
) -> dict[str, Any]:
    """mergekit's TestTokenizerMerges.make_config."""
    recipe: dict[str, Any] = {
        "merge_method": method,
        "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models],
        "dtype": "float32",
    }
    if base is not None:
        recipe["base_model"] = base
    for k, v in extra.items():
        if k == "t":
            recipe["parameters"] = {"t": v}
        else:
            recipe[k] = v
    return recipe


def configs(m: dict[str, str]) -> dict[str, tuple[dict, int, int | None]]:
    """name -> (recipe, expected vocabulary size, expected config vocab_size)."""
    three = [m["base"], m["padded"], m["chatml"]]
    two = [m["base"], m["chatml"]]
    return {
        "source_base": (_recipe(three, m["base"], tokenizer_source="base"), 64, 64),
        "source_union": (_recipe(three, m["base"], tokenizer_source="union"), 66, 66),
        "source_model": (_recipe(three, m["base"], tokenizer_source=m["chatml"]), 66, 66),
        "slerp_union": (_recipe(two, m["base"], "slerp", tokenizer_source="union", t=0.5), 66, 66),
        "force_token": (
            _recipe(
                two,
                m["base"],
                tokenizer={
                    "source": "union",
                    "tokens": {
                        "_tok_10": {"source": m["chatml"], "force": True},
                        "_tok_11": {"source": m["base"], "force": True},
                    },
                },
            ),
            66,
            66,
        ),
        "model_token_id": (
            _recipe(
                two,
                m["base"],
                tokenizer={
                    "source": "base",
                    "tokens": {
                        "_tok_20": {
                            "source": {"kind": "model_token", "model": m["chatml"], "token_id": 64},
                            "force": True,
                        },
                        "_tok_21": {
                            "source": {"kind": "model_token", "model": m["base"], "token": "<s>"},
                            "force": True,
                        },
                    },
                },
            ),
            64,
            64,
        ),
        "pad_to_multiple_of": (
            _recipe(
                [m["chatml"]], m["chatml"], tokenizer={"source": "base", "pad_to_multiple_of": 16}
            ),
            66,
            80,
        ),
        # beyond mergekit's tests: every default fill, padding over several models
        "union_fills": (
            _recipe(
                [m["base"], m["short"], m["chatml"], m["chatml2"]],
                m["base"],
                tokenizer={
                    "source": "union",
                    "pad_to_multiple_of": 32,
                    "tokens": {"<new>": {"source": {"kind": "zero"}}},
                },
            ),
            67,
            96,
        ),
        "union_task_arithmetic": (
            _recipe(
                [m["short"], m["chatml"]], m["base"], "task_arithmetic", tokenizer_source="union"
            ),
            66,
            66,
        ),
    }  # fmt: skip


NAMES = list(configs(dict.fromkeys(["base", "chatml", "padded", "chatml2", "short"], "x")))


def _vocab(folder: Path) -> tuple[dict[str, int], int]:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return tok.get_vocab(), len(tok.added_tokens_decoder)


@pytest.mark.parametrize("name", NAMES)
def test_the_same_merge_as_mergekit(name, pico, tmp_path):
    recipe, size, rows = configs(pico)[name]
    config = mergekit_config.MergeConfiguration.model_validate(recipe)
    mk, ml = tmp_path / "mk", tmp_path / "ml"
    mergekit_merge.run_merge(config, out_path=str(mk), options=mergekit_merge.MergeOptions())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(ml)]) == 0

    vocab, added = _vocab(ml)
    assert (vocab, added) == _vocab(mk)
    assert len(vocab) == size
    for folder in (mk, ml):
        assert json.loads((folder / "config.json").read_text())["vocab_size"] == rows
    theirs, ours = (
        load_file(str(mk / "model.safetensors")),
        load_file(str(ml / "model.safetensors")),
    )
    assert set(ours) == set(theirs)
    for k, b in theirs.items():
        a = ours[k]
        assert a.shape == b.shape, k
        scale = max(float(np.abs(b).max()), 1e-12)
        worst = float(np.abs(a.astype(np.float64) - b).max()) / scale
        assert worst <= 1e-6, f"{name}: {k} differs by {worst:g} of its largest value"
    model = transformers.AutoModelForCausalLM.from_pretrained(ml)
    assert model.get_input_embeddings().weight.shape[0] == rows
    tok = transformers.AutoTokenizer.from_pretrained(ml)
    assert tok.convert_ids_to_tokens(list(range(size))) == sorted(vocab, key=vocab.get)
    if IM[0] in vocab:
        assert vocab[IM[0]] in tok(IM[0])["input_ids"]


def test_named_rows_land_where_mergekit_says(pico, tmp_path):
    """mergekit's own checks: union takes <|im_start|> from model_chatml; forced tokens
    come from their source; model_token rows from the named row."""
    recipe, _, _ = configs(pico)["force_token"]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(tmp_path / "o")]) == 0
    out = load_file(str(tmp_path / "o" / "model.safetensors"))["model.embed_tokens.weight"]
    vocab, _ = _vocab(tmp_path / "o")
    emb = {n: load_file(f"{pico[n]}/model.safetensors")["model.embed_tokens.weight"] for n in pico}
    np.testing.assert_allclose(out[vocab["_tok_10"]], emb["chatml"][10], rtol=1e-6)
    np.testing.assert_allclose(out[vocab["_tok_11"]], emb["base"][11], rtol=1e-6)
    np.testing.assert_allclose(out[vocab["<|im_start|>"]], emb["chatml"][64], rtol=1e-6)


def test_without_a_tokenizer_source_both_refuse_different_vocabularies(pico, tmp_path, capsys):
    """mergekit's legacy mode (without its base_model, which mergelab's linear refuses):
    different vocabulary sizes and no tokenizer merge asked."""
    recipe = _recipe([pico["base"], pico["padded"], pico["chatml"]], None)
    config = mergekit_config.MergeConfiguration.model_validate(recipe)
    with pytest.raises(Exception, match="size mismatch"):
        mergekit_merge.run_merge(
            config, out_path=str(tmp_path / "mk"), options=mergekit_merge.MergeOptions()
        )
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(tmp_path / "ml")]) == 2
    assert "model.embed_tokens.weight" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, dtype",
    [("union_fills", "bfloat16"), ("union_fills", "float16"), ("slerp_union", "bfloat16")],
)
def test_compat_mergekit_gives_mergekits_bytes(name, dtype, pico, tmp_path):
    """``--compat mergekit``: rows a model lacks (means of the others', padding) built as
    mergekit's PermutedVocabulary builds them, in its compute dtype: the same bytes."""
    from safetensors.torch import load_file as torch_load

    recipe = {**configs(pico)[name][0], "dtype": dtype}
    config = mergekit_config.MergeConfiguration.model_validate(recipe)
    mk, ml = tmp_path / "mk", tmp_path / "ml"
    mergekit_merge.run_merge(config, out_path=str(mk), options=mergekit_merge.MergeOptions())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(ml), "--compat", "mergekit"]) == 0
    theirs, ours = (
        torch_load(str(mk / "model.safetensors")),
        torch_load(str(ml / "model.safetensors")),
    )
    assert set(ours) == set(theirs)
    for k, b in theirs.items():
        assert ours[k].dtype == b.dtype and torch.equal(ours[k], b), k


def _copy_model(src: str, dst: Path, drop: tuple[str, ...] = (), broken: str | None = None) -> str:
    import shutil

    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink(missing_ok=True)
    if broken is not None:
        (dst / broken).write_text('{"version": "1.0", "model": ')
    return str(dst)


def test_tokenizer_files_that_cannot_serve_are_named(pico, tmp_path, capsys):
    """A model folder with a broken tokenizer.json, or a base with no vocabulary file, is
    one error line naming the folder and files; a model without any tokenizer file takes
    the base's vocabulary, as in mergekit, and the merge says so."""
    files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    cases = {
        "broken": (_copy_model(pico["chatml"], tmp_path / "broken", broken="tokenizer.json"), 2),
        "none": (_copy_model(pico["chatml"], tmp_path / "none", drop=files), 0),
    }
    for name, (folder, code) in cases.items():
        recipe = _recipe([pico["base"], folder], pico["base"], tokenizer_source="union")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        out = tmp_path / f"out-{name}"
        assert main(["merge", str(path), "--out", str(out)]) == code, name
        err = capsys.readouterr().err
        if code:
            assert (
                err.startswith(
                    f"mergelab: error: tokenizer_source: cannot load the tokenizer of {folder} "
                    f"from tokenizer.json, tokenizer_config.json"
                )
                and err.count("\n") == 1
            )
            assert not out.exists()
        else:
            assert f"{folder}: no tokenizer files; its vocabulary is taken as " in err
    bare = _copy_model(pico["base"], tmp_path / "bare", drop=("tokenizer.json",))
    recipe = _recipe([bare, pico["chatml"]], bare, tokenizer_source="union")
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(tmp_path / "out-bare")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"{bare} has tokenizer_config.json but no vocabulary "
            f"(tokenizer.json, tokenizer.model, vocab.json or vocab.txt)"
        )
    )


def test_no_copy_tokenizer_is_refused_with_a_merged_vocabulary(pico, tmp_path, capsys):
    recipe = _recipe([pico["base"], pico["chatml"]], pico["base"], tokenizer_source="union")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "o"
    assert main(["merge", str(path), "--out", str(out), "--no-copy-tokenizer"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("mergelab: error: --no-copy-tokenizer: the vocabulary is merged")
    assert not out.exists()
