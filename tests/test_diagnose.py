"""``mergelab diagnose`` and :func:`mergelab.diagnose.diagnose`: streamed metrics equal the
flat computation, the table and JSON, the skipped-data note, errors, the data metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import mergelab.diagnose as diagnose_module
from mergelab.analysis.mergeability import task_vector_metrics
from mergelab.analysis.weight_stats import layer_stats
from mergelab.cli import main
from mergelab.diagnose import diagnose

SHAPES = {
    "embed.weight": (40, 12),
    "layer.0.weight": (12, 16),
    "layer.0.bias": (16,),
    "conv.weight": (4, 3, 2, 2),
}


def _states() -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(0)
    base = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    a = {n: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for n, v in base.items()}
    b = {n: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for n, v in base.items()}
    b["layer.0.bias"] = base["layer.0.bias"].copy()  # a frozen tensor: tau_B = 0 there
    return a, b, base


@pytest.fixture
def files(write_st) -> tuple[Path, Path, Path]:
    a, b, base = _states()
    return write_st("a", a), write_st("b", b), write_st("base", base)


def _flat(sd: dict, base: dict) -> np.ndarray:
    return np.concatenate([(sd[n].astype(np.float64) - base[n]).ravel() for n in SHAPES])


def test_streamed_metrics_equal_the_flat_vectors(files, monkeypatch) -> None:
    monkeypatch.setattr(diagnose_module, "CHUNK_ELEMENTS", 7)  # many chunks per tensor
    a, b, base = _states()
    result = diagnose(*files)
    want = task_vector_metrics(_flat(a, base), _flat(b, base))
    for name, value in want.items():
        assert result.weights[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    # Layer-wise effective rank: per tensor, then a plain mean (the frozen bias gives 1).
    ranks = [
        task_vector_metrics(a[n].astype(np.float64) - base[n], b[n].astype(np.float64) - base[n])[
            "effective_rank"
        ]
        for n in SHAPES
    ]
    assert ranks[2] == 1.0
    assert result.weights["layerwise_effective_rank"] == pytest.approx(np.mean(ranks))
    # The same numbers from in-memory state dicts, and independently of the chunking.
    monkeypatch.setattr(diagnose_module, "CHUNK_ELEMENTS", 1 << 20)
    again = diagnose(a, b, base)
    assert again.weights == pytest.approx(result.weights, rel=1e-12)


def test_per_layer_metrics_by_a_plain_svd(files, monkeypatch) -> None:
    """Every per-layer metric equals the mean over 2-D weights of a float64 full SVD's, with
    the Gram matrices streamed one row per chunk (embed 40x12), held and transposed
    (layer 12x16), and of a reshaped conv (4x12)."""
    monkeypatch.setattr(diagnose_module, "CHUNK_ELEMENTS", 7)
    a, b, base = _states()
    result = diagnose(*files, subspace_k=3)
    # 2-D weights: embed (40x12), layer (12x16), conv reshaped to 4x12; the bias is 1-D.
    assert result.layers["matrices"] == 3
    assert result.layers["bottom_matrices"] == 3

    def plain(name: str) -> dict[str, float]:
        shape = (SHAPES[name][0], -1)
        tau = [(x[name].astype(np.float64) - base[name]).reshape(shape) for x in (a, b)]
        (ua, sa, vta), (ub, sb, vtb) = (np.linalg.svd(t, full_matrices=False) for t in tau)
        r = len(sa)

        def rms(x: np.ndarray, y: np.ndarray) -> float:
            return float(np.linalg.norm(x.T @ y) / math.sqrt(3))

        return {
            "singular_value_overlap": float(sa @ sb / np.linalg.norm(sa) / np.linalg.norm(sb)),
            "left_subspace_overlap": rms(ua[:, :3], ub[:, :3]),
            "right_subspace_overlap_top": rms(vta[:3].T, vtb[:3].T),
            "interaction_overlap_top": rms(vta[:3].T, vtb[:3].T) ** 2,
            "right_subspace_overlap_bottom": rms(vta[r - 3 :].T, vtb[r - 3 :].T),
            "interaction_overlap_bottom": rms(vta[r - 3 :].T, vtb[r - 3 :].T) ** 2,
        }

    rows = [plain(n) for n in ("embed.weight", "layer.0.weight", "conv.weight")]
    for name in rows[0]:
        want = np.mean([row[name] for row in rows])
        assert result.layers[name] == pytest.approx(want, abs=1e-6), name


def test_weight_stats_equal_layer_stats(files) -> None:
    a, b, _ = _states()
    rows = diagnose(*files).weight_stats
    want = {w["layer"]: w for w in layer_stats([a, b])}
    assert sorted(r["layer"] for r in rows) == sorted(want)
    for row in rows:
        w = want[row["layer"]]
        for key in ("max_abs", "var", "avg_max_abs", "avg_var", "var_independent", "var_ratio"):
            assert row[key] == pytest.approx(w[key], rel=1e-9), (row["layer"], key)


def test_cli_table_json_and_skipped_note(files, tmp_path, capsys) -> None:
    out = tmp_path / "d.json"
    args = ["diagnose", str(files[0]), str(files[1]), "--base", str(files[2])]
    assert main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "weights only (tau_X = X - base" in table
    assert "weight statistics" in table
    assert "\nwith data (" not in table and "\nloss barrier (" not in table
    skipped = [line for line in table.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 3
    assert all("--data" in line for line in skipped)
    doc = json.loads(out.read_text())
    result = diagnose(*files)
    assert doc["weights"]["cosine"] == pytest.approx(result.weights["cosine"], rel=1e-12)
    assert f"  cosine{' ' * 29}{result.weights['cosine']:.6f}" in table
    assert doc["data"] is None and doc["barrier"] is None
    assert doc["skipped"] == result.skipped
    assert "cosine" in doc["descriptions"] and "activation_l2" not in doc["descriptions"]
    assert len(doc["weight_stats"]["tensors"]) == 4
    first = out.read_bytes()
    assert main([*args, "--json", str(out)]) == 0  # its own result: replaced
    assert out.read_bytes() == first  # deterministic
    assert doc["written_by"].startswith("mergelab ") and doc["written_by"].endswith(" diagnose")


@pytest.mark.parametrize(
    "text",
    ['{"my": "notes"}', "not json", '["a list"]', '{"written_by": "mergelab 0.1.0 advise"}'],
)
def test_cli_json_never_replaces_a_file_it_did_not_write(files, tmp_path, capsys, text) -> None:
    mine = tmp_path / "notes.json"
    mine.write_text(text)
    args = ["diagnose", str(files[0]), str(files[1]), "--base", str(files[2])]
    assert main([*args, "--json", str(mine)]) == 2
    assert capsys.readouterr().err == (
        f"mergelab: error: --json {mine}: exists and mergelab diagnose did not write it; remove "
        "it or give another name\n"
    )
    assert mine.read_text() == text


def test_cli_mismatched_shape_names_tensor_and_file(write_st, files, capsys) -> None:
    a, _, _ = _states()
    a["layer.0.weight"] = np.zeros((12, 15), np.float32)
    bad = write_st("bad", a)
    code = main(["diagnose", str(bad), str(files[1]), "--base", str(files[2])])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"mergelab: error: tensor shapes or kinds differ: layer.0.weight: {bad} [12, 15] vs "
        f"{files[1]} [12, 16]; layer.0.weight: {bad} [12, 15] vs {files[2]} [12, 16] "
        "(--exclude REGEX leaves task-specific tensors, e.g. heads, out)\n"
    )
    # Leaving the tensor out makes the rest comparable.
    assert (
        main(
            [
                "diagnose",
                str(bad),
                str(files[1]),
                "--base",
                str(files[2]),
                "--exclude",
                r"^layer\.0\.weight$",
            ]
        )
        == 0
    )
    assert "1 tensor(s) of A left out" in capsys.readouterr().out


def test_cli_missing_file(files, tmp_path, capsys) -> None:
    missing = tmp_path / "nope.safetensors"
    code = main(["diagnose", str(files[0]), str(missing), "--base", str(files[2])])
    assert code == 2
    assert capsys.readouterr().err == f"mergelab: error: {missing}: no such file or folder\n"


def test_bottom_k_skipped_above_the_cap(files) -> None:
    result = diagnose(*files, gram_max=11)  # only the 4x12 conv is <= 11
    assert result.layers["bottom_matrices"] == 1
    assert result.layers["bottom_over_cap"] == 2
    assert any("2 of 3 2-D weights skipped (min(m, n) > --gram-max 11" in n for n in result.notes)
    assert not math.isnan(result.layers["right_subspace_overlap_bottom"])


# -- with data: a tiny cnn on digits -------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_states() -> tuple[dict, dict, dict]:
    import torch

    from mergelab.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", 10, in_chans=1, img_size=8)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    a = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in base.items()
    }
    two = build_model("cnn", 2, in_chans=1, img_size=8).state_dict()
    b = {**a, "head.weight": two["head.weight"], "head.bias": two["head.bias"]}
    return a, b, base


def test_data_metrics_of_a_model_with_itself(cnn_states) -> None:
    a, _, base = cnn_states
    result = diagnose(a, dict(a), base, data="digits", arch="cnn", samples=24, alphas=3)
    d = result.data
    assert d is not None
    assert d["encoder_gradient_cosine"] == pytest.approx(1.0)
    assert d["encoder_gradient_l2"] == 0.0
    assert d["input_gradient_cosine"] == pytest.approx(1.0)
    assert d["activation_l2"] == 0.0
    assert d["activation_magnitude_ratio"] == 1.0
    assert result.barrier is not None
    assert result.barrier["alphas"] == [0.0, 0.5, 1.0]
    assert result.barrier["loss_barrier"] == pytest.approx(0.0, abs=1e-6)
    assert not result.skipped
    assert "with data (digits, val split, 24 + 24 samples" in result.table()


def test_data_metrics_two_tasks_own_heads(cnn_states) -> None:
    a, b, base = cnn_states
    result = diagnose(
        a,
        b,
        base,
        data=["digits", "mt-parity"],
        arch="cnn",
        samples=16,
        alphas=2,
        exclude=r"^head\.",
    )
    assert result.data is not None and result.barrier is not None
    assert result.barrier["mode"].startswith("encoder interpolated")
    # B shares A's encoder: the weight metrics see one zero task vector... and the gradients
    # differ (other task, other head), so their cosine is below 1.
    assert result.data["encoder_gradient_cosine"] < 0.999
    assert result.settings["data"] == ["digits", "mt-parity"]


def test_data_needs_an_arch(cnn_states) -> None:
    from mergelab.errors import ConfigError

    a, _, base = cnn_states
    with pytest.raises(ConfigError, match="--arch is needed for the data metrics"):
        diagnose(a, dict(a), base, data="digits")


def test_rank_deficient_weight_left_out_of_the_bottom_k(write_st, tmp_path) -> None:
    """A rank-1 task vector (40 x 12: eleven zero singular values, more than k = 3) has no
    determined bottom-3 right vectors: that weight is counted, noted and left out of the
    bottom-k means, which then equal the other weights' alone."""
    a, b, base = _states()
    u = np.arange(1, 41, dtype=np.float32)[:, None] / 40
    a["embed.weight"] = base["embed.weight"] + 0.1 * u * np.linspace(-1, 1, 12, dtype=np.float32)
    result = diagnose(a, b, base, subspace_k=3)
    lay = result.layers
    assert (lay["matrices"], lay["bottom_matrices"], lay["bottom_rank_deficient"]) == (3, 2, 1)
    assert any(
        "1 of 3 2-D weights left out: a task vector is rank-deficient" in n for n in result.notes
    )
    # The bottom mean is that of the two full-rank weights (by the same path, one at a time).
    only = diagnose(
        {k: v for k, v in a.items() if k != "embed.weight"},
        {k: v for k, v in b.items() if k != "embed.weight"},
        {k: v for k, v in base.items() if k != "embed.weight"},
        subspace_k=3,
    )
    for name in ("right_subspace_overlap_bottom", "interaction_overlap_bottom"):
        assert lay[name] == pytest.approx(only.layers[name], rel=1e-12)
    doc = json.loads(result.to_json())
    assert doc["layers"]["bottom_rank_deficient"] == 1


def test_cli_base_that_is_one_of_the_models(files, capsys) -> None:
    code = main(["diagnose", str(files[0]), str(files[1]), "--base", str(files[0])])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        f"note: {files[0]} equals the base in every tensor compared (its task vector is 0: is "
        "--base one of the models?); cosine, angle and the per-layer overlaps are n/a"
    ) in out
    assert f"  cosine{' ' * 29}n/a" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--data", "nosuchspec", "--arch", "cnn"],
            "unknown dataset 'nosuchspec'; known: mnist5k, digits, cifar10,",
        ),
        (["--data", "digits"], "--arch is needed for the data metrics: A does not record its"),
    ],
)
def test_cli_data_options_checked_before_the_weight_pass(
    files, monkeypatch, capsys, extra, message
) -> None:
    """A bad --data spec or a missing --arch fails at once (one line, exit 2), not after the
    weight pass, which takes minutes on a large model."""

    def no_weight_pass(*args, **kwargs):
        raise AssertionError("the weight pass ran before the data options were checked")

    monkeypatch.setattr(diagnose_module, "weight_metrics", no_weight_pass)
    code = main(["diagnose", str(files[0]), str(files[1]), "--base", str(files[2]), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"mergelab: error: {message}")
    assert err.count("\n") == 1
