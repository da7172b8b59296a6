"""Combinations: ensembles equal an independent NumPy computation on the cached outputs,
greedy rules match the paper, soups leave out harmful ingredients, test never selects."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mergelab.combine import (
    Ingredient,
    greedy_select,
    rank_by_score,
    run_combinations,
)
from mergelab.data import DatasetSplits
from mergelab.evaluate import Evaluator, ModelSource, Outputs

SPLITS = ("val", "test")


def _setup(
    digits: DatasetSplits, sds: list[dict[str, torch.Tensor]], cache: Path | None, **kw
) -> tuple[Evaluator, list[Ingredient]]:
    ev = Evaluator(digits, arch=kw.pop("arch", "mlp"), cache_dir=cache, progress=False, **kw)
    ings = []
    for i, sd in enumerate(sds):
        src = ModelSource.of(sd, index=i)
        ings.append(Ingredient(src, {s: ev.outputs(src, s) for s in SPLITS}))
    return ev, ings


def _acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def _numpy_greedy(scores: list[float], score_of) -> tuple[int, ...]:
    """The Model Soups greedy rule written out independently."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    chosen, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        s = score_of([*chosen, i])
        if s >= best:
            chosen, best = [*chosen, i], s
    return tuple(chosen)


def test_ensembles_equal_numpy_on_the_cached_files(
    digits: DatasetSplits, mlps, tmp_path: Path
) -> None:
    ev, ings = _setup(digits, mlps, tmp_path)
    res = run_combinations(ev, ings)
    passes_before = ev.counter.passes("model")
    W = np.stack([sd["head.weight"].double().numpy() for sd in mlps])
    b = np.stack([sd["head.bias"].double().numpy() for sd in mlps])
    loaded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for s in SPLITS:
        files = [np.load(ev.cache.path(i.outputs[s].key)) for i in ings]
        L = np.stack([f["logits"] for f in files]).astype(np.float64)
        F = np.stack([f["features"] for f in files]).astype(np.float64)
        loaded[s] = (L, F, files[0]["targets"])

    def ens_logits(m, s):
        return loaded[s][0][list(m)].mean(0)

    def ens_features(m, s):
        m = list(m)
        return loaded[s][1][m].mean(0) @ W[m].mean(0).T + b[m].mean(0)

    everyone = range(len(mlps))
    tol = {"rtol": 1e-5, "atol": 1e-5}
    for s in SPLITS:
        np.testing.assert_allclose(res["Ens Logits"].logits[s], ens_logits(everyone, s), **tol)
        np.testing.assert_allclose(res["Ens Features"].logits[s], ens_features(everyone, s), **tol)
        star = loaded[s][1].mean(0) @ W[0].T + b[0]
        np.testing.assert_allclose(res["Ens Features*"].logits[s], star, **tol)
    y_val = loaded["val"][2]
    val_scores = [_acc(loaded["val"][0][i], y_val) for i in everyone]
    own = (("Greedy Ens Logits (own)", ens_logits), ("Greedy Ens Features (own)", ens_features))
    for method, fn in own:
        expected = _numpy_greedy(val_scores, lambda m, fn=fn: _acc(fn(m, "val"), y_val))
        assert res[method].members == expected
        for s in SPLITS:
            np.testing.assert_allclose(res[method].logits[s], fn(expected, s), **tol)
        assert res[method].n_inference_models == len(expected)
    assert res["Ens Logits"].n_inference_models == len(mlps)
    assert res["Uniform Soup"].n_inference_models == 1
    # Ensembles read the cache: no model ran during the combinations.
    assert ev.counter.passes("model") == passes_before == 2 * len(mlps)
    assert all(res[m].forward_passes == 0 for m in res if m.startswith("Ens"))


def test_identical_models_give_the_single_model(digits: DatasetSplits, mlps) -> None:
    same = [{k: v.clone() for k, v in mlps[0].items()} for _ in range(3)]
    ev, ings = _setup(digits, same, None)
    res = run_combinations(ev, ings)
    for s in SPLITS:
        single = ings[0].outputs[s].logits
        for method in ("Ens Logits", "Ens Features", "Ens Features*", "Uniform Soup"):
            np.testing.assert_allclose(res[method].logits[s], single, rtol=1e-5, atol=1e-5)
    assert res["Greedy Soup"].members == (0, 1, 2)  # equal score is accepted...
    strict = run_combinations(ev, ings, strict=True)
    assert strict["Greedy Soup"].members == (0,)  # ...but not when strictly better is required
    assert strict["Greedy Ens Features"].members == (0,)
    assert strict["Greedy Ens Features (own)"].members == (0,)


def test_greedy_select_follows_the_paper_rule() -> None:
    assert rank_by_score([0.5, 0.9, 0.9, float("nan"), 0.1]) == [1, 2, 0, 4, 3]
    tried: list[tuple[int, ...]] = []

    def score(m: tuple[int, ...]) -> float:
        tried.append(m)
        return {(1, 2): 0.9, (1, 2, 0): 0.85, (1, 2, 3): 0.95}.get(m, 0.0)

    res = greedy_select([0.5, 0.9, 0.9, 0.2], score)
    assert tried == [(1, 2), (1, 2, 0), (1, 2, 3)]
    assert res.members == (1, 2, 3) and res.score == 0.95
    assert [s.accepted for s in res.steps] == [True, False, True]
    strict = greedy_select([0.5, 0.9, 0.9, 0.2], score, strict=True)
    assert strict.members == (1,)


def test_greedy_soup_leaves_out_a_harmful_ingredient(digits: DatasetSplits, mlps) -> None:
    gen = torch.Generator().manual_seed(0)
    harmful = {
        k: v + 3 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in mlps[1].items()
    }
    sds = [mlps[0], harmful, mlps[1], mlps[2], mlps[3]]
    ev, ings = _setup(digits, sds, None)
    val_scores = [_acc(i.outputs["val"].logits, i.outputs["val"].targets) for i in ings]
    res = run_combinations(ev, ings)
    soup = res["Greedy Soup"]
    assert 1 not in soup.members
    assert len(soup.members) >= 2  # good ingredients do get in (these models soup well)
    assert soup.members[0] == int(np.argmax(val_scores))
    step = next(s for s in soup.steps if s.candidate == 1)
    assert not step.accepted
    assert _acc(soup.logits["val"], ings[0].outputs["val"].targets) >= max(val_scores)
    # Soup passes: one val pass per greedy candidate, the uniform soup's val, and a test pass
    # per final soup; nothing else.
    assert ev.counter.passes("soup", "val") == len(soup.steps) + 1
    assert ev.counter.passes("soup", "test") == 1 + (len(soup.members) > 1)
    assert ev.counter.passes("model") == 2 * len(sds)
    assert soup.forward_passes == len(soup.steps) + (len(soup.members) > 1)
    assert res["Uniform Soup"].members == tuple(range(5))


def test_greedy_ensembles_take_the_soup_members(digits: DatasetSplits, mlps) -> None:
    ev, ings = _setup(digits, mlps, None)
    res = run_combinations(ev, ings, methods=("Greedy Ens Logits",))
    assert "Greedy Soup" in res  # computed because the ensemble needs its members
    soup = res["Greedy Soup"].members
    assert res["Greedy Ens Logits"].members == soup
    both = run_combinations(ev, ings)
    assert both["Greedy Ens Features"].members == both["Greedy Soup"].members


def _fake(logits: np.ndarray, targets: np.ndarray, split: str, tag: str) -> Outputs:
    return Outputs(logits, np.zeros((len(logits), 128), np.float32), targets, split, tag)


def test_selection_uses_val_only_when_val_and_test_disagree(digits: DatasetSplits, mlps) -> None:
    y = {s: digits.split(s).targets.numpy() for s in SPLITS}
    eye = np.eye(10, dtype=np.float32)

    def right(s: str, scale: float) -> np.ndarray:
        return scale * eye[y[s]]

    def wrong(s: str, scale: float) -> np.ndarray:
        return scale * eye[(y[s] + 1) % 10]

    # Model 0 is right on val and wrong on test; model 1 the other way round.
    outs = [
        {"val": right("val", 5), "test": wrong("test", 5)},
        {"val": wrong("val", 10), "test": right("test", 5)},
    ]
    ev = Evaluator(digits, arch="mlp", cache_dir=None, progress=False)
    ings = [
        Ingredient(
            ModelSource.of(mlps[i], index=i),
            {s: _fake(outs[i][s], y[s], s, f"fake{i}{s}") for s in SPLITS},
        )
        for i in range(2)
    ]
    res = run_combinations(ev, ings, methods=("Greedy Ens Logits",))
    comb = res["Greedy Ens Logits"]
    assert comb.members == (0,)
    assert _acc(comb.logits["test"], y["test"]) == 0.0  # reported honestly, not re-chosen


def test_changing_test_outputs_changes_no_selection(digits: DatasetSplits, mlps) -> None:
    ev, ings = _setup(digits, mlps, None)
    res = run_combinations(ev, ings)
    rng = np.random.default_rng(0)
    scrambled = [
        Ingredient(
            i.source,
            {
                "val": i.outputs["val"],
                "test": replace(
                    i.outputs["test"],
                    logits=rng.normal(size=i.outputs["test"].logits.shape).astype(np.float32),
                    features=rng.normal(size=i.outputs["test"].features.shape).astype(np.float32),
                ),
            },
        )
        for i in ings
    ]
    again = run_combinations(ev, scrambled)
    for method, comb in res.items():
        assert again[method].members == comb.members, method
        np.testing.assert_array_equal(again[method].logits["val"], comb.logits["val"])


def test_bn_recalibration_of_merged_models_is_counted(digits: DatasetSplits) -> None:
    from mergelab.evaluate.toy import train_toy_models

    nets = train_toy_models(
        digits,
        arch="resnet_small",
        n_models=2,
        steps=3,
        pretrain_steps=5,
        model_kwargs={"widths": (8, 8, 8)},
    )
    kw = {"arch": "resnet_small", "model_kwargs": {"widths": (8, 8, 8)}}
    ev, ings = _setup(digits, nets, None, **kw)
    res = run_combinations(ev, ings, bn_recalibrate=True, methods=("Uniform Soup",))
    # One train pass for the one merged model, shared by its val and test passes.
    assert ev.counter.passes("bn") == 1
    assert ev.counter.passes("soup") == 2
    plain_ev, plain_ings = _setup(digits, nets, None, **kw)
    plain = run_combinations(plain_ev, plain_ings, methods=("Uniform Soup",))
    assert plain_ev.counter.passes("bn") == 0
    assert not np.allclose(res["Uniform Soup"].logits["val"], plain["Uniform Soup"].logits["val"])
