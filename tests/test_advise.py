"""``mergelab advise``: merge where merging costs nothing, ensemble where soups fail, the
tolerance moves the line, and every number in the JSON is the table's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergelab.advise import advise
from mergelab.cli import main
from mergelab.data import load_dataset
from mergelab.evaluate.toy import train_toy_models


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _save(states, folder: Path, stem: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sd in enumerate(states):
        paths.append(str(folder / f"{stem}{i}.safetensors"))
        save_file(sd, paths[-1])
    return paths


@pytest.fixture(scope="module")
def strangers(digits, tmp_path_factory) -> list[str]:
    """Five weak mlps trained from five different random starts: averaging them mixes
    unrelated hidden units (near chance), their logit ensemble is far better than any."""
    states = [
        train_toy_models(digits, arch="mlp", n_models=1, steps=10, pretrain_steps=0, seed=s)[0]
        for s in range(5)
    ]
    return _save(states, tmp_path_factory.mktemp("strangers"), "m")


@pytest.fixture(scope="module")
def siblings(digits, tmp_path_factory) -> tuple[list[str], str]:
    """Three fine-tunes of one start (a few steps each), and that start."""
    pre = train_toy_models(digits, arch="mlp", n_models=1, steps=0, pretrain_steps=60)[0]
    states = train_toy_models(digits, arch="mlp", n_models=3, steps=5, pretrain_steps=60)
    folder = tmp_path_factory.mktemp("siblings")
    save_file(pre, str(folder / "pre.safetensors"))
    return _save(states, folder, "ft"), str(folder / "pre.safetensors")


def _run(models, tmp_path, **kw):
    return advise(models, arch="mlp", data="digits", progress=False, cache_dir=tmp_path, **kw)


def test_soups_that_fail_give_the_ensemble(strangers, tmp_path):
    a = _run(strangers, tmp_path / "cache")
    assert a.recommendation == "ensemble"
    assert a.merge_loss["high"] < 0  # the soup is worse than the best model, beyond noise
    assert a.ensemble_gain["low"] > 0
    chosen = next(o for o in a.options if o.name == a.choice)
    assert chosen.kind == "ensemble" and chosen.relative_cost >= 2
    assert any("merging loses accuracy" in e for e in a.evidence)


def test_a_tolerance_above_the_gain_keeps_one_model(strangers, tmp_path):
    gain = _run(strangers, tmp_path / "cache").ensemble_gain
    a = _run(strangers, tmp_path / "cache", tolerance=gain["low"] + 0.01)
    assert a.recommendation == "single"  # the soup fails, so the 1x option is one model
    best = max((o for o in a.options if o.kind == "single"), key=lambda o: o.val_accuracy)
    assert a.choice == best.name
    b = _run(strangers, tmp_path / "cache", tolerance=gain["low"] - 0.01)
    assert b.recommendation == "ensemble"


def test_equal_merge_and_ensemble_give_the_merge(siblings, tmp_path):
    models, _ = siblings
    a = _run(models, tmp_path / "cache")
    assert a.ensemble_gain["low"] <= 0  # no advantage beyond the noise
    assert a.recommendation == "merge"
    chosen = next(o for o in a.options if o.name == a.choice)
    assert chosen.kind == "merge" and chosen.relative_cost == 1.0


def test_identical_copies_tie_exactly_and_merge(siblings, tmp_path):
    models, _ = siblings
    copies = []
    for i in range(3):
        copies.append(str(tmp_path / f"copy{i}.safetensors"))
        Path(copies[-1]).write_bytes(Path(models[0]).read_bytes())
    a = _run(copies, tmp_path / "cache")
    assert a.ensemble_gain == pytest.approx(
        {"estimate": 0.0, "low": 0.0, "high": 0.0, "level": 0.95}
    )
    assert a.recommendation == "merge"


def test_costs_and_json_equal_the_table(strangers, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "advise",
            "--arch",
            "mlp",
            "--data",
            "digits",
            "--models",
            *strangers,
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
            "--no-progress",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    data = json.loads((out / "advice.json").read_text())
    assert f"recommendation: {data['recommendation'].upper()} ({data['choice']})" in text
    single = next(o for o in data["options"] if o["kind"] == "single")
    for o in data["options"]:
        line = next(ln for ln in text.splitlines() if ln.startswith(o["name"] + " "))
        assert f"{100 * o['val_accuracy']:.2f}%" in line
        assert f"{100 * o['test_accuracy']:.2f}%" in line
        if o["name"] in ("Ens Logits", "Ens Features"):  # every model: N x one model's cost
            assert o["flops"] == 5 * single["flops"] and o["relative_cost"] == 5.0
        if o["kind"] in ("single", "merge"):
            assert o["relative_cost"] == 1.0


def test_base_adds_task_vector_geometry(siblings, tmp_path):
    from safetensors.numpy import load_file

    models, base = siblings
    a = _run(models, tmp_path / "cache", base=base)
    assert len(a.pairwise) == 2  # the best model against each other one
    name, got = next(iter(a.pairwise.items()))
    first, second = name.split(" vs ")
    pre = load_file(base)
    tau = [
        np.concatenate([(load_file(m)[k] - pre[k]).ravel() for k in sorted(pre)]).astype(float)
        for m in (next(p for p in models if Path(p).stem == s) for s in (first, second))
    ]
    cos = tau[0] @ tau[1] / np.linalg.norm(tau[0]) / np.linalg.norm(tau[1])
    assert got["cosine"] == pytest.approx(cos, abs=1e-6)
    assert got["l2_distance"] == pytest.approx(np.linalg.norm(tau[0] - tau[1]), rel=1e-6)


def test_json_onto_an_input_is_refused_and_the_input_kept(siblings, tmp_path, capsys):
    models, _base = siblings
    before = Path(models[0]).read_bytes()
    args = ["advise", "--arch", "mlp", "--data", "digits", "--models", *models]
    assert main([*args, "--json", models[0], "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mergelab: error: --json {models[0]}: is the input {models[0]}; it would be overwritten"
    )
    assert Path(models[0]).read_bytes() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tolerance", "-1"], "argument --tolerance: -1: give a finite number of points >= 0"),
        (["--tolerance", "nan"], "argument --tolerance: nan: give a finite number of points"),
    ],
)
def test_bad_tolerance_is_one_line(siblings, capsys, extra, message):
    models, _ = siblings
    with pytest.raises(SystemExit) as exit_:
        main(["advise", "--arch", "mlp", "--data", "digits", "--models", *models, *extra])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_one_model_is_refused(siblings, tmp_path, capsys):
    models, _ = siblings
    args = ["advise", "--arch", "mlp", "--data", "digits", "--models", models[0]]
    assert main([*args, "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "mergelab: error: advise: give at least two models (got 1)"
    )


def test_the_same_checkpoint_twice_and_a_base_that_does_not_fit_are_refused_first(
    siblings, tmp_path, capsys, monkeypatch
):
    import mergelab.compare as compare

    def no_evaluation(*a, **k):
        raise AssertionError("evaluated before the inputs were checked")

    monkeypatch.setattr(compare, "run_compare", no_evaluation)
    models, _ = siblings
    args = ["advise", "--arch", "mlp", "--data", "digits", "--cache-dir", str(tmp_path)]
    assert main([*args, "--models", models[0], models[0]]) == 2
    assert "--models: " in capsys.readouterr().err
    odd = tmp_path / "odd.safetensors"
    save_file({"w": torch.zeros(3)}, str(odd))
    assert main([*args, "--models", *models, "--base", str(odd)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mergelab: error: --base {odd}: does not match the models")
    assert main([*args, "--models", *models, "--base", models[1]]) == 2
    assert "is one of the models" in capsys.readouterr().err
