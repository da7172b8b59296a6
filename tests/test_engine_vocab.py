"""Merged-vocabulary views (mergelab.engine.vocab) without mergekit or transformers: the
permuted and filled rows equal a token-by-token port of mergekit's PermutedVocabulary,
for any flat element range; the plan merges the views; the recipe's ``tokenizer:``
section is checked, every bad field in one line."""

from __future__ import annotations

import numpy as np
import pytest

from mergelab.engine import build_plan, merge_state_dicts
from mergelab.engine.execute import MemorySink, execute
from mergelab.engine.vocab import plan_rows, wrap
from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint
from mergelab.io.tokenizer_merge import TokenSetting, VocabularyMerge, key
from mergelab.recipe import Recipe

WIDTH = 3


def _vocab(tokens: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(tokens)}


@pytest.fixture
def setup(tmp_path):
    """Three models (paths under tmp_path) with different vocabularies, and an output
    vocabulary that has tokens in all, some, one and none of them."""
    vocabs = {
        "a": ["x", "y", "z", "p"],  # the base
        "b": ["y", "x", "q", "p"],
        "c": ["x", "y", "q", "r", "s"],
    }
    out = _vocab(["x", "y", "z", "p", "q", "r", "s", "new"])
    rng = np.random.default_rng(0)
    paths = {n: str(tmp_path / n) for n in vocabs}
    tensors = {
        n: {
            "embed_tokens.weight": rng.normal(size=(len(v), WIDTH)).astype(np.float32),
            "lm_head.weight": rng.normal(size=(len(v), WIDTH)).astype(np.float32),
            "norm.weight": rng.normal(size=(WIDTH,)).astype(np.float32),
        }
        for n, v in vocabs.items()
    }
    perms = {
        key(paths[n]): np.array([_vocab(v).get(t, -1) for t in out], dtype=np.int64)
        for n, v in vocabs.items()
    }
    merge = VocabularyMerge(
        tokenizer=None,
        vocab=out,
        size=12,  # padded
        permutations=perms,
        original_vocabs={key(paths[n]): _vocab(v) for n, v in vocabs.items()},
        base=key(paths["a"]),
    )
    return merge, paths, tensors, vocabs


def reference(merge, order, base, tokens, tensors, vocabs, name):
    """mergekit's PermutedVocabulary.execute, token by token, in NumPy."""
    models = list(order)
    vocab = merge.vocab
    perm = {m: {t: vocabs[m].index(t) if t in vocabs[m] else -1 for t in vocab} for m in models}
    cfgs = dict(tokens)
    average = set()
    for t in vocab:
        if t in cfgs:
            continue
        have = [m for m in models if perm[m][t] >= 0]
        if len(have) == 1:
            cfgs[t] = ("model", have[0])
        elif not have:
            cfgs[t] = ("zero",)
        elif base in models and perm[base][t] >= 0:
            cfgs[t] = ("model", base)
        else:
            average.add(t)
    defaults = {}
    for t in vocab:
        force = t in tokens and tokens[t][-1] == "force"
        if not force and all(perm[m][t] >= 0 for m in models):
            continue
        if t in average:
            acc = np.zeros(WIDTH, np.float32)
            have = [m for m in models if perm[m][t] >= 0]
            for m in have:
                acc = acc + tensors[m][name][perm[m][t]]
            defaults[t] = acc / np.float32(len(have))
        elif cfgs[t][0] == "zero":
            defaults[t] = np.zeros(WIDTH, np.float32)
        elif cfgs[t][0] == "model_token":
            defaults[t] = tensors[cfgs[t][1]][name][cfgs[t][2]]
        else:
            defaults[t] = tensors[cfgs[t][1]][name][perm[cfgs[t][1]][t]]
    out = {}
    for m in models:
        rows = np.zeros((merge.size, WIDTH), np.float32)
        for t, i in vocab.items():
            force = t in tokens and tokens[t][-1] == "force"
            rows[i] = tensors[m][name][perm[m][t]] if perm[m][t] >= 0 and not force else defaults[t]
        rows[len(vocab) :] = rows[: len(vocab)].mean(axis=0)
        out[m] = rows
    return out


@pytest.mark.parametrize("with_base", [True, False])
def test_rows_equal_mergekits_permuted_vocabulary(setup, with_base):
    merge, paths, tensors, vocabs = setup
    order = ["a", "b", "c"]
    tokens = {
        "y": TokenSetting(source=paths["c"], force=True),
        "new": TokenSetting(source={"kind": "model_token", "model": paths["b"], "token": "q"}),
    }
    ref_tokens = {"y": ("model", "c", "force"), "new": ("model_token", "b", 2)}
    ckpts = [(paths[n], ArrayCheckpoint(tensors[n], n)) for n in order]
    views, notes = wrap(
        merge, ckpts, [paths[n] for n in order], paths["a"] if with_base else None, tokens
    )
    assert "vocabulary merged (8 tokens, padded to 12)" in notes[0]
    for name in ("embed_tokens.weight", "lm_head.weight"):
        expected = reference(
            merge, order, "a" if with_base else None, ref_tokens, tensors, vocabs, name
        )
        for n, view in zip(order, views, strict=True):
            assert view.infos[name].shape == (12, WIDTH)
            whole = view.read(name).reshape(12, WIDTH)
            np.testing.assert_allclose(whole, expected[n], rtol=1e-6, atol=1e-7)
            flat = expected[n].reshape(-1)
            for start, stop in [(0, 1), (2, 7), (5, 25), (23, 36), (30, 36), (4, 4)]:
                got = view.read(name, start, stop)
                np.testing.assert_allclose(got, flat[start:stop], rtol=1e-6, atol=1e-7)
                buf = np.empty(stop - start, np.float32)
                assert view.read(name, start, stop, out=buf) is buf
        np.testing.assert_array_equal(views[0].read("norm.weight"), tensors["a"]["norm.weight"])


def test_the_fills_follow_mergekits_defaults(setup):
    merge, paths, _, _ = setup
    order = [key(paths[n]) for n in "abc"]
    plan = plan_rows(merge, order, key(paths["a"]), None)
    a, b, c = order
    v = merge.vocab
    assert plan.fills[v["z"]] == ("row", a, 2)  # only the base has it
    assert plan.fills[v["p"]] == ("row", a, 3)  # a and b have it: the base's row
    assert plan.fills[v["q"]] == ("mean", ((b, 2), (c, 2)))  # the base lacks it
    assert plan.fills[v["r"]] == ("row", c, 3)  # one model has it
    assert plan.fills[v["new"]] == ("zero",)  # none has it
    assert v["x"] not in plan.fills and v["y"] not in plan.fills
    bad = {"z": TokenSetting(source=paths["b"])}
    with pytest.raises(MergeError, match=r"tokenizer.tokens.z.source: .* has no token 'z'"):
        plan_rows(merge, order, a, bad)
    with pytest.raises(MergeError, match="is not one of the models merged"):
        plan_rows(merge, order, a, {"z": TokenSetting(source="/elsewhere")})
    with pytest.raises(MergeError, match="give its source"):
        plan_rows(merge, order, a, {"z": TokenSetting(force=True)})


def _views(merge, paths, states, order):
    """Every model of ``order`` (``states[name]``) through the merged vocabulary, a the base."""
    ckpts = [(paths[n], ArrayCheckpoint(states[n], n)) for n in order]
    views, _ = wrap(merge, ckpts, [paths[n] for n in order], paths["a"], None)
    return views


def test_bfloat16_rows_are_copied_bit_for_bit(setup):
    merge, paths, tensors, _ = setup
    torch = pytest.importorskip("torch")
    order = ["a", "b", "c"]
    bf = {
        n: {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors[n].items()} for n in order
    }
    views = _views(merge, paths, bf, order)
    raw = views[1].read("embed_tokens.weight").reshape(12, WIDTH)
    assert raw.dtype == np.uint16
    own = ArrayCheckpoint(bf["b"]).read("embed_tokens.weight").reshape(4, WIDTH)
    assert np.array_equal(raw[merge.vocab["x"]], own[1])  # b's x is its row 1
    assert np.array_equal(raw[merge.vocab["q"]], own[2])


def test_the_plan_merges_the_views(setup):
    merge, paths, tensors, _ = setup
    order = ["a", "b", "c"]
    views = _views(merge, paths, tensors, order)
    plan = build_plan("linear", views)
    sink = MemorySink(plan)
    execute(plan, sink, progress=False)
    permuted = [
        {k: v.read(k).reshape(v.infos[k].shape) for k in v.infos} for v in views
    ]  # what the views show, merged directly
    expected = merge_state_dicts("linear", permuted)
    for k, value in expected.items():
        np.testing.assert_allclose(sink.arrays[k].reshape(value.shape), value, rtol=1e-6)


def test_files_close_when_every_view_has(setup):
    merge, paths, tensors, _ = setup
    closed = []

    class Tracked(ArrayCheckpoint):
        def close(self) -> None:
            closed.append(self.label)

    ckpts = [(paths[n], Tracked(tensors[n], n)) for n in "abc"]
    views, _ = wrap(merge, ckpts, [paths[n] for n in "abc"], None, None)
    views[0].close()
    views[0].close()  # twice: counted once
    views[1].close()
    assert closed == []
    views[2].close()
    assert sorted(closed) == ["a", "b", "c"]


def test_a_tokenizer_id_past_the_rows_is_one_error_line(setup):
    merge, paths, tensors, _ = setup
    small = {k: v[:2] if v.ndim == 2 else v for k, v in tensors["c"].items()}
    with pytest.raises(MergeError, match=r"^c: embed_tokens.weight has 2 rows but its tokenizer"):
        wrap(merge, [(paths["c"], ArrayCheckpoint(small, "c"))], [paths["c"]], None, None)


def test_the_tokenizer_section_is_checked_in_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "merge_method: linear\nmodels: [a, b]\ntokenizer_source: union\n"
        "tokenizer:\n  source: union\n  pad_to_multiple_of: 0\n  colour: red\n  tokens:\n"
        "    t1: {source: {kind: model_token, model: a}}\n"
        "    t2: {source: 7, force: maybe}\n"
        "    t3: {source: {kind: zero}, force: true}\n"
    )
    with pytest.raises(MergeError) as err:
        Recipe.from_yaml(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: not supported: ")
    for part in (
        "tokenizer: give either tokenizer or tokenizer_source, not both",
        "tokenizer.tokens.t1.source: give exactly one of token_id or token",
        "tokenizer.tokens.t2.source: a model's path, {kind: zero} or {kind: model_token",
        "tokenizer.tokens.t2.force: Input should be a valid boolean",
        "tokenizer.pad_to_multiple_of: Input should be greater than 0",
        "tokenizer.colour: Extra inputs are not permitted",
    ):
        assert part in text
    assert "t3" not in text
    path.write_text(
        "merge_method: linear\nmodels: [a, b]\n"
        "tokenizer: {source: base, pad_to_multiple_of: 8, tokens: {t: {source: a}}}\n"
    )
    recipe = Recipe.from_yaml(path)
    assert recipe.tokenizer is not None and recipe.tokenizer.pad_to_multiple_of == 8
    assert "tokenizer:" in recipe.to_yaml()
