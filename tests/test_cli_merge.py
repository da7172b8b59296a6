"""The ``mergelab merge`` and ``mergelab methods`` commands as a user runs them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import yaml
from ckpt_helpers import finetunes, random_state
from safetensors.numpy import load_file

from mergelab.cli import main, parse_size


def test_merge_from_options(write_st, tmp_path, capsys):
    base = random_state(0)
    paths = [write_st(f"m{i}", m) for i, m in enumerate(finetunes(base, 3))]
    b = write_st("base", base)
    out = tmp_path / "out"
    code = main(
        [
            "merge",
            "--method",
            "ties",
            "--base",
            str(b),
            "--models",
            *map(str, paths),
            "--param",
            "density=0.2",
            "--param",
            "lambda=1.0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    merged = load_file(str(out / "model.safetensors"))
    assert set(merged) == set(base)
    saved = yaml.safe_load((out / "mergelab.yaml").read_text())
    assert saved["parameters"] == {"density": 0.2, "lambda": 1.0}


def test_merge_from_recipe_with_weights_and_dry_run(write_st, tmp_path, capsys):
    models = finetunes(random_state(0), 2)
    paths = [write_st(f"m{i}", m) for i, m in enumerate(models)]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [
                    {"model": str(p), "parameters": {"weight": w}}
                    for p, w in zip(paths, [1, 3], strict=True)
                ],
            }
        )
    )
    out = tmp_path / "o.safetensors"
    assert main(["merge", str(recipe), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "linear" in text and "peak memory" in text and not out.exists()
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    merged = load_file(str(out))
    expected = (models[0]["head.weight"] + 3 * models[1]["head.weight"]) / 4
    np.testing.assert_allclose(merged["head.weight"], expected, rtol=1e-6)
    assert (
        main(
            [
                "merge",
                "--method",
                "linear",
                "--models",
                *map(str, paths),
                "--weights",
                "1",
                "3",
                "--out",
                str(tmp_path / "p.safetensors"),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(
        load_file(str(tmp_path / "p.safetensors"))["head.weight"], merged["head.weight"]
    )


def test_errors_go_to_stderr_with_exit_code_2(write_st, tmp_path, capsys):
    path = write_st("m", random_state(0))
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    assert main(["merge", "--method", "linear", "--models", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "mergelab: error:" in err and "already exists; pass --force" in err
    assert out.read_bytes() == b"keep me"
    assert main(["merge", "--method", "linear", "--models", str(path)]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_methods_listing(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in (
        "linear",
        "task_arithmetic",
        "ties",
        "dare",
        "slerp",
        "model_stock",
        "breadcrumbs",
    ):
        assert name in listing
    assert main(["methods", "ties"]) == 0
    assert "density" in capsys.readouterr().out


def test_console_script_does_not_import_torch(write_st, tmp_path):
    """The merge path runs on NumPy alone: no torch start-up cost for a merge."""
    path = write_st("m", random_state(0))
    code = (
        "import sys; from mergelab.cli import main; "
        f"rc = main(['merge', '--method', 'linear', '--models', {str(path)!r}, "
        f"'--out', {str(tmp_path / 'o.safetensors')!r}]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sizes():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("1024") == 1024


def test_demo_merges_with_every_method(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    rows = (tmp_path / "demo" / "summary.csv").read_text().splitlines()
    header, *body = rows
    assert header.startswith("method,parameters,seconds")
    by_method = {r.split(",")[0]: r.split(",") for r in body}
    assert {"linear", "task_arithmetic", "ties", "dare", "model_stock", "slerp"} <= set(by_method)
    assert float(by_method["linear"][-1]) == 0.0  # the average is at distance 0 from itself
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2  # outputs exist: needs --force
    assert "pass --force" in capsys.readouterr().err


def test_demo_refuses_a_users_files_before_any_work(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "checkpoints" / "base").mkdir(parents=True)
    (out / "checkpoints" / "base" / "config.json").write_text('{"my": "config"}')
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {out / 'checkpoints' / 'base' / 'config.json'}: not written by "
        f"mergelab, which would replace it; move it away or choose another --out"
    ]
    assert (out / "checkpoints" / "base" / "config.json").read_text() == '{"my": "config"}'
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["config.json"]
