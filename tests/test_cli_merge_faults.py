"""Fault injection for `mergelab merge`: every case asserts the one error line, the exit
status, and that the inputs and the folder listing are exactly as before."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ckpt_helpers import random_state
from safetensors.numpy import load_file, save_file

from mergelab.cli import main


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "<dir>"
        for p in sorted(folder.rglob("*"))
    }


def one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mergelab: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def merge_cli(*args: str | Path) -> int:
    return main(["merge", "--no-progress", *map(str, args)])


@pytest.fixture
def ckpts(tmp_path):
    """``ckpts/`` holding two checkpoints and a README, as a user keeps them."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for i, name in enumerate(("x", "y")):
        save_file(random_state(i), str(folder / f"{name}.safetensors"))
    (folder / "README").write_text("the only copy\n")
    return folder


@pytest.fixture
def hf(tmp_path):
    """Two Hugging Face style model folders with config and tokenizer files."""
    folders = []
    for i in range(2):
        f = tmp_path / f"hf{i + 1}"
        f.mkdir()
        save_file(random_state(i), str(f / "model.safetensors"))
        (f / "config.json").write_text('{"model_type": "toy"}')
        (f / "tokenizer.json").write_text("{}")
        folders.append(f)
    return folders


# -- 1. nothing lost ------------------------------------------------------------------------


def test_force_on_a_folder_holding_the_inputs_deletes_nothing(ckpts, capsys):
    before = snapshot(ckpts)
    x, y = ckpts / "x.safetensors", ckpts / "y.safetensors"
    assert merge_cli("--method", "linear", "--models", x, y, "--out", ckpts, "--force") == 2
    one_error(capsys, f"--out {ckpts}: holds the input", "inputs are never replaced")
    assert snapshot(ckpts) == before


def test_output_onto_an_input_model_folder_is_refused(hf, capsys):
    before = [snapshot(f) for f in hf]
    for out in (hf[0], hf[0] / "model.safetensors"):
        assert merge_cli("--method", "linear", "--models", *hf, "--out", out, "--force") == 2
        one_error(capsys, str(out), "input")
    assert [snapshot(f) for f in hf] == before


def test_force_replaces_only_mergelabs_own_files_in_a_folder(hf, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "toy"}')
    (out / "README.md").write_text("notes\n")
    # An existing folder without model files is written into; its other files stay.
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "README.md",
        "model.safetensors",
        "mergelab.yaml",
    }
    capsys.readouterr()
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out) == 2
    one_error(capsys, "model.safetensors: already exists; pass --force")
    # Resharded with --force: the old single file goes, the user's files stay.
    assert (
        merge_cli(
            "--method",
            "linear",
            "--models",
            *hf,
            "--out",
            out,
            "--force",
            "--max-shard-size",
            "200",
        )
        == 0
    )
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" not in names
    assert {"config.json", "README.md", "model.safetensors.index.json", "mergelab.yaml"} <= names
    assert (out / "README.md").read_text() == "notes\n"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {n for n in names if n.startswith("model-")}


def test_force_never_replaces_a_file_mergelab_did_not_write(hf, tmp_path, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    save_file(random_state(9), str(out / "model.safetensors"))  # somebody else's model
    before = snapshot(out)
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out, "--force") == 2
    one_error(capsys, "model.safetensors: not written by mergelab; --force replaces only")
    assert snapshot(out) == before
    single = tmp_path / "theirs.safetensors"
    save_file(random_state(9), str(single))
    assert merge_cli("--method", "linear", "--models", *hf, "--out", single, "--force") == 2
    one_error(capsys, "theirs.safetensors: not written by mergelab")


def test_an_existing_recipe_record_is_not_overwritten_without_force(hf, tmp_path, capsys):
    record = tmp_path / "m.mergelab.yaml"
    record.write_text("my own notes\n")
    out = tmp_path / "m.safetensors"
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out) == 2
    one_error(capsys, "m.mergelab.yaml: already exists; pass --force")
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out, "--force") == 2
    one_error(capsys, "m.mergelab.yaml: not written by mergelab")
    assert record.read_text() == "my own notes\n" and not out.exists()


@pytest.mark.parametrize("name", [".", ".."])
def test_the_current_folder_and_its_parent_are_not_outputs(hf, tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    assert merge_cli("--method", "linear", "--models", *hf, "--out", name, "--force") == 2
    one_error(capsys, f"--out {name}: the current folder or one above it cannot be an output")
    assert snapshot(tmp_path) == before


def test_dry_run_reports_the_refusal_too(ckpts, capsys):
    x, y = ckpts / "x.safetensors", ckpts / "y.safetensors"
    assert merge_cli("--method", "linear", "--models", x, y, "--out", ckpts, "--dry-run") == 2
    one_error(capsys, "holds the input")


# -- 2. nothing read from outside --------------------------------------------------------------


def sharded(tmp_path: Path, weight_map: object) -> Path:
    folder = tmp_path / "sharded"
    folder.mkdir(exist_ok=True)
    save_file(random_state(0), str(folder / "a.safetensors"))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    return index


def test_shard_paths_cannot_leave_the_index_folder(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    save_file(random_state(0), str(outside / "x.safetensors"))
    names = list(random_state(0))
    cases = {
        "../outside/x.safetensors": "leaves the folder",
        str(outside / "x.safetensors"): "is an absolute path",
        "link.safetensors": "is a link that leads outside",
    }
    for shard, reason in cases.items():
        index = sharded(tmp_path, dict.fromkeys(names, shard))
        link = index.parent / "link.safetensors"
        if not link.is_symlink():
            link.symlink_to(outside / "x.safetensors")
        out = tmp_path / "o.safetensors"
        assert merge_cli("--method", "linear", "--models", index, index, "--out", out) == 2
        one_error(capsys, str(index), repr(shard), reason)
        assert not out.exists()


@pytest.mark.parametrize(
    ("weight_map", "needle"),
    [
        (["a.safetensors"], 'needs a "weight_map" object'),
        ({"embed.weight": 3}, "weight_map entry 'embed.weight' is 3, not a shard file name"),
    ],
)
def test_malformed_weight_maps_are_one_line(tmp_path, capsys, weight_map, needle):
    index = sharded(tmp_path, weight_map)
    out = tmp_path / "o.safetensors"
    assert merge_cli("--method", "linear", "--models", index, "--out", out) == 2
    one_error(capsys, needle)


def test_a_fifo_input_is_refused_instead_of_hanging(tmp_path, capsys):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert merge_cli("--method", "linear", "--models", fifo, "--out", tmp_path / "o") == 2
    one_error(capsys, "pipe.safetensors: a FIFO")


# -- 3. nothing silently wrong ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--param", "lambda=.nan"], "parameter lambda: nan is not a finite number"),
        (["--param", "lambda=1e39"], "merged tensor 'embed.weight' has NaN or Inf"),
        (["--weights", "inf", "1"], "parameter weight: inf is not a finite number"),
    ],
)
def test_non_finite_parameters_and_outputs_are_refused(hf, tmp_path, capsys, extra, needle):
    base = tmp_path / "base.safetensors"
    save_file(random_state(5), str(base))
    out = tmp_path / "o.safetensors"
    rc = merge_cli(
        "--method", "task_arithmetic", "--base", base, "--models", *hf, "--out", out, *extra
    )
    assert rc == 2
    one_error(capsys, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "hf1", "hf2"]


def test_averages_of_huge_finite_values_do_not_overflow(tmp_path):
    a = {"w": np.array([3.0e38, -3.3e38, 1.0], dtype=np.float32)}
    b = {"w": np.array([3.2e38, -3.1e38, 2.0], dtype=np.float32)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    out = tmp_path / "o.safetensors"
    assert (
        merge_cli("--method", "linear", "--models", *(tmp_path.glob("*.safetensors")), "--out", out)
        == 0
    )
    expected = ((a["w"].astype(np.float64) + b["w"]) / 2).astype(np.float32)
    np.testing.assert_array_equal(load_file(str(out))["w"], expected)


def test_an_output_dtype_too_narrow_for_the_values_is_refused(tmp_path, capsys):
    for i in range(2):
        save_file({"w": np.full(3, 7e4 + i, dtype=np.float32)}, str(tmp_path / f"{i}.safetensors"))
    out = tmp_path / "o.safetensors"
    args = [
        "--method",
        "linear",
        "--models",
        tmp_path / "0.safetensors",
        tmp_path / "1.safetensors",
    ]
    assert merge_cli(*args, "--dtype", "float16", "--out", out) == 2
    one_error(capsys, "merged tensor 'w' has values up to 7e+04 overflow")
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_an_unknown_method_with_a_base_is_one_line(hf, capsys):
    assert merge_cli("--method", "tie", "--base", hf[0], "--models", hf[1], "--out", "x") == 2
    one_error(capsys, "unknown merge method 'tie'; available:")


# -- 5. nothing left behind ---------------------------------------------------------------------


def test_a_full_disk_while_writing_the_record_leaves_nothing(hf, tmp_path, monkeypatch, capsys):
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".yaml"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "o.safetensors"
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out) == 2
    one_error(capsys, "o.mergelab.yaml: cannot write (No space left on device)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf1", "hf2"]


SLOW_MERGE = """
import sys, time
import mergelab.io.writer as w
real = w.SafetensorsWriter.write
def slow(self, *a, **k):
    real(self, *a, **k)
    print("writing", flush=True)
    time.sleep(0.2)
w.SafetensorsWriter.write = slow
from mergelab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_slow_merge(hf, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_MERGE,
            "merge",
            "--method",
            "linear",
            "--no-progress",
            "--models",
            *map(str, hf),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"  # mid-merge: staging exists
    return proc


def test_sigterm_mid_merge_cleans_up_like_ctrl_c(hf, tmp_path):
    out = tmp_path / "o.safetensors"
    proc = _start_slow_merge(hf, out)
    assert any(p.name.startswith(".mergelab-partial-") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == (
        "mergelab: terminated; no partial output was left behind"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf1", "hf2"]


def test_staging_of_a_killed_merge_is_removed_by_the_next_run(hf, tmp_path, capfd):
    out = tmp_path / "o.safetensors"
    proc = _start_slow_merge(hf, out)
    proc.kill()
    proc.communicate(timeout=60)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".mergelab-partial-")]
    assert len(left) == 1 and any(left[0].iterdir())  # SIGKILL leaves it: nothing can run
    deadline = time.time() + 10
    while time.time() < deadline:  # the killed pid must be gone before it counts as stale
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out) == 0
    err = capfd.readouterr().err
    assert f"removed 1 staging file(s) left in {tmp_path} by an interrupted run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hf1",
        "hf2",
        "o.mergelab.yaml",
        "o.safetensors",
    ]
