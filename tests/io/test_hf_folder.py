"""A folder output of Hugging Face model folders is a model folder: config, generation
config and tokenizer copied as mergekit does, the chat template written, transformers
loads it, and ``--force`` replaces these files only when mergelab wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mergelab.cli import main
from mergelab.engine import merge_state_dicts
from mergelab.errors import MergeError
from mergelab.io.hf_folder import CHATML, companion_files

CONFIG = {"model_type": "llama", "hidden_size": 4, "num_hidden_layers": 2}


def _folder(root: Path, name: str, seed: int, *, tokenizer: bool = False) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": rng.normal(size=(8, 4)).astype(np.float32),
            "model.layers.1.mlp.up_proj.weight": rng.normal(size=(8, 4)).astype(np.float32),
        },
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(json.dumps({**CONFIG, "name": name}))
    (folder / "generation_config.json").write_text(json.dumps({"max_length": 7, "from": name}))
    if tokenizer:
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
        (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 9}))
        (folder / "tokenizer.model").write_bytes(bytes(range(256)))  # binary: byte-exact
    return folder


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """``base`` (config, generation config, tokenizer), ``ft1`` and ``ft2`` (configs only)."""
    _folder(tmp_path, "base", 0, tokenizer=True)
    _folder(tmp_path, "ft1", 1)
    _folder(tmp_path, "ft2", 2, tokenizer=True)
    return tmp_path


def _recipe(root: Path, **extra) -> Path:
    lines = [
        "merge_method: task_arithmetic",
        f"base_model: {root / 'base'}",
        f"models: [{root / 'ft1'}, {root / 'ft2'}]",
        "parameters: {lambda: 0.5}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    path = root / "r.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_config_and_tokenizer_come_from_the_base(models: Path):
    assert main(["merge", str(_recipe(models)), "--out", str(models / "out")]) == 0
    out = models / "out"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model"):
        assert (out / name).read_bytes() == (models / "base" / name).read_bytes(), name
    record = (out / "mergelab.yaml").read_text()
    assert "# wrote: config.json\n" in record and "# wrote: tokenizer.model\n" in record


def test_without_a_base_folder_the_first_models_config(models: Path, tmp_path: Path):
    recipe = tmp_path / "lin.yaml"
    recipe.write_text(f"merge_method: linear\nmodels: [{models / 'ft1'}, {models / 'ft2'}]\n")
    assert main(["merge", str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["name"] == "ft1"
    assert not (tmp_path / "o" / "tokenizer.json").exists()  # ft1 has no tokenizer


def test_tokenizer_source_no_copy_and_chat_template(models: Path):
    path = _recipe(models, tokenizer_source=str(models / "ft2"), chat_template="chatml")
    assert main(["merge", str(path), "--out", str(models / "a")]) == 0
    assert (models / "a" / "tokenizer.json").read_bytes() == (
        models / "ft2" / "tokenizer.json"
    ).read_bytes()
    config = json.loads((models / "a" / "tokenizer_config.json").read_text())
    assert config == {"model_max_length": 9, "chat_template": CHATML}
    assert (
        main(["merge", str(_recipe(models)), "--out", str(models / "b"), "--no-copy-tokenizer"])
        == 0
    )
    assert sorted(p.name for p in (models / "b").iterdir()) == [
        "config.json",
        "generation_config.json",
        "mergelab.yaml",
        "model.safetensors",
    ]


def test_force_replaces_only_what_mergelab_wrote(models: Path, capsys):
    out = models / "out"
    args = ["merge", str(_recipe(models)), "--out", str(out)]
    assert main(args) == 0
    base_tokenizer = (models / "base" / "tokenizer.json").read_bytes()
    (out / "tokenizer.json").write_text("changed since")
    assert main([*args, "--force"]) == 0  # its own config and tokenizer: replaced
    assert (out / "tokenizer.json").read_bytes() == base_tokenizer
    # Without mergelab's record the files are no longer known as its own: kept, and said so.
    (out / "mergelab.yaml").unlink()
    (out / "config.json").write_text('{"mine": true}')
    capsys.readouterr()
    assert main([*args, "--force"]) == 0
    err = capsys.readouterr().err
    assert "mergelab: note: kept config.json, generation_config.json, tokenizer.json" in err
    assert (out / "config.json").read_text() == '{"mine": true}'
    assert "# wrote:" not in (out / "mergelab.yaml").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"tokenizer_source": "union"}, "tokenizer_source: cannot load the tokenizer of"),
        ({"tokenizer_source": "ft1"}, "tokenizer_source: ft1 is not a folder"),
        ({"chat_template": "vicuna"}, "chat_template: 'vicuna' is neither a Jinja template"),
    ],
)
def test_bad_tokenizer_options_are_one_line(models: Path, capsys, extra, message):
    assert main(["merge", str(_recipe(models, **extra)), "--out", str(models / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mergelab: error:") and message in err and "\n" not in err
    assert not (models / "x").exists()


def test_a_single_file_output_refuses_folder_only_keys(models: Path, capsys):
    out = models / "m.safetensors"
    assert main(["merge", str(_recipe(models, chat_template="chatml")), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mergelab: error: chat_template: written only into a folder output (--out DIR); "
        f"{out} is a single .safetensors file"
    )


def test_transformers_loads_the_merge(tmp_path: Path):
    """A real Llama folder and tokenizer: the merged folder loads with transformers, its
    weights are the task-arithmetic merge, and the tokenizer and chat template work."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    for seed, name in enumerate(("base", "ft1", "ft2")):
        torch.manual_seed(seed)
        transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / name)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(tmp_path / "base")
    recipe = _recipe(tmp_path, chat_template="chatml")
    assert main(["merge", str(recipe), "--out", str(tmp_path / "merged")]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    states = [load_file(str(tmp_path / n / "model.safetensors")) for n in ("base", "ft1", "ft2")]
    expected = merge_state_dicts("task_arithmetic", states[1:], states[0], params={"lambda": 0.5})
    got = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer("hello world")["input_ids"] == [3, 4]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize(
    "config, where",
    [
        ({"num_hidden_layers": 2, "text_config": {"num_hidden_layers": 2}}, []),
        (  # LLaVA, Gemma 3, Mistral 3: the text decoder's count, the vision tower's kept
            {"text_config": {"num_hidden_layers": 2}, "vision_config": {"num_hidden_layers": 2}},
            ["text_config"],
        ),
        (
            {"llm_config": {"num_hidden_layers": 2}, "vision_config": {"num_layers": 2}},
            ["llm_config"],
        ),
    ],
)
def test_the_stacked_layer_count_goes_where_the_config_keeps_it(tmp_path: Path, config, where):
    (tmp_path / "config.json").write_text(json.dumps(config))
    files, notes = companion_files(str(tmp_path), [], layers=5)
    expected = json.loads(json.dumps(config))
    holder = expected
    for key in where:
        holder = holder[key]
    holder["num_hidden_layers"] = 5
    assert json.loads(files["config.json"]) == expected
    assert f"config.json: {''.join(k + '.' for k in where)}num_hidden_layers 2 -> 5" in notes[-1]


def test_a_config_without_a_layer_count_is_one_line(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"vision_config": {"num_hidden_layers": 2}}))
    with pytest.raises(MergeError) as info:
        companion_files(str(tmp_path), [], layers=5)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/config.json: no layer count") and "\n" not in message
    assert "text_config" in message


def test_stacked_slices_of_a_nested_text_config(models: Path, tmp_path: Path):
    """A folder whose config nests its decoder's (``text_config``): the stacked count lands
    there."""
    config = {"model_type": "llava", "text_config": {"num_hidden_layers": 2}}
    (models / "base" / "config.json").write_text(json.dumps(config))
    source = {"model": str(models / "base"), "layer_range": [0, 2]}
    recipe = tmp_path / "stack.yaml"
    recipe.write_text(
        json.dumps({"slices": [{"sources": [source]}] * 2, "merge_method": "passthrough"})
    )
    assert main(["merge", str(recipe), "--out", str(tmp_path / "o")]) == 0
    written = json.loads((tmp_path / "o" / "config.json").read_text())
    assert written == {"model_type": "llava", "text_config": {"num_hidden_layers": 4}}
    assert len(load_file(str(tmp_path / "o" / "model.safetensors"))) == 4


@pytest.mark.parametrize(
    "config, written",
    [
        ({"dtype": "float32", "n_layer": 2}, {"dtype": "bfloat16", "n_layer": 2}),  # transformers 5
        ({"torch_dtype": "float32"}, {"torch_dtype": "bfloat16"}),  # transformers 4
        (
            {"dtype": "float32", "torch_dtype": "float32"},
            {"dtype": "bfloat16", "torch_dtype": "bfloat16"},
        ),
        ({"model_type": "llama"}, {"model_type": "llama", "torch_dtype": "bfloat16"}),
    ],
)
def test_the_config_names_the_outputs_dtype(tmp_path: Path, config, written):
    """As mergekit sets ``torch_dtype`` to the recipe's dtype: transformers then loads the
    weights in it."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    files, notes = companion_files(str(tmp_path), [], dtype="bfloat16")
    assert json.loads(files["config.json"]) == written
    assert "-> bfloat16 (the output's dtype)" in notes[-1]


def test_a_config_already_in_the_dtype_is_copied_as_is(tmp_path: Path):
    raw = b'{"dtype":"bfloat16",  "hidden_size": 4}'
    (tmp_path / "config.json").write_bytes(raw)
    files, notes = companion_files(str(tmp_path), [], dtype="BF16")
    assert files["config.json"] == raw and len(notes) == 1


def test_layers_and_dtype_together(tmp_path: Path):
    config = {"dtype": "float32", "text_config": {"num_hidden_layers": 2}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    files, _ = companion_files(str(tmp_path), [], layers=6, dtype="float16")
    assert json.loads(files["config.json"]) == {
        "dtype": "float16",
        "text_config": {"num_hidden_layers": 6},
    }
    with pytest.raises(MergeError, match=r"^dtype: unknown dtype 'float7'"):
        companion_files(str(tmp_path), [], dtype="float7")
