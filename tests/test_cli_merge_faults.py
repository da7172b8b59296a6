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
    # An existing folder without model files is written into; its other files stay (the
    # user's config.json too: the inputs' copy is not written over it).
    assert merge_cli("--method", "linear", "--models", *hf, "--out", out) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "README.md",
        "model.safetensors",
        "mergelab.yaml",
        "tokenizer.json",  # copied from the first model, which has one
    }
    assert (out / "config.json").read_text() == '{"model_type": "toy"}'
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


# -- found by a hostile review --------------------------------------------------------------------


def test_float64_inputs_that_overflow_a_float32_output_are_refused(tmp_path, capsys):
    save_file({"x": np.array([1e300], dtype=np.float64)}, str(tmp_path / "a.safetensors"))
    save_file({"x": np.array([1.0], dtype=np.float32)}, str(tmp_path / "b.safetensors"))
    out = tmp_path / "o.safetensors"
    args = ["--models", tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    assert merge_cli("--method", "linear", *args, "--dtype", "float32", "--out", out) == 2
    one_error(capsys, "merged tensor 'x' has values up to 5e+299 overflow float32")
    assert not out.exists()


def test_a_second_sigterm_does_not_cut_the_cleanup_short(hf, tmp_path, monkeypatch, capsys):
    import mergelab.io.output as output
    import mergelab.io.writer as writer

    real_write, real_abort = writer.SafetensorsWriter.write, output.Output.abort

    def write(self, *args):
        real_write(self, *args)
        os.kill(os.getpid(), signal.SIGTERM)

    def abort(self):
        os.kill(os.getpid(), signal.SIGTERM)  # `kill` twice in a row
        real_abort(self)

    monkeypatch.setattr(writer.SafetensorsWriter, "write", write)
    monkeypatch.setattr(output.Output, "abort", abort)
    assert merge_cli("--method", "linear", "--models", *hf, "--out", tmp_path / "o") == 143
    assert capsys.readouterr().err.strip() == (
        "mergelab: terminated; no partial output was left behind"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf1", "hf2"]
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN  # restored


def test_a_hub_blobs_link_cannot_open_the_whole_disk(tmp_path, capsys):
    repo = tmp_path / "hub"
    snapshot_dir = repo / "snapshots" / "abc"
    snapshot_dir.mkdir(parents=True)
    (repo / "blobs").symlink_to("/")
    save_file(random_state(0), str(tmp_path / "secret.safetensors"))
    target = Path("../../blobs") / str(tmp_path / "secret.safetensors").lstrip("/")
    (snapshot_dir / "s.safetensors").symlink_to(target)
    index = snapshot_dir / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(random_state(0), "s.safetensors")}))
    out = tmp_path / "o.safetensors"
    assert merge_cli("--method", "linear", "--models", index, "--out", out) == 2
    one_error(capsys, "'s.safetensors' is a link that leads outside")
    # A real cache layout (blobs is a folder of the repository) still opens.
    (repo / "blobs").unlink()
    (repo / "blobs").mkdir()
    save_file(random_state(0), str(repo / "blobs" / "deadbeef"))
    (snapshot_dir / "s.safetensors").unlink()
    (snapshot_dir / "s.safetensors").symlink_to("../../blobs/deadbeef")
    assert merge_cli("--method", "linear", "--models", index, "--out", out) == 0


def test_an_output_inside_an_input_model_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file(random_state(0), str(folder / "model-00001-of-00001.safetensors"))
    weight_map = dict.fromkeys(random_state(0), "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    before = snapshot(folder)
    out = folder / "model.safetensors"
    assert merge_cli("--method", "linear", "--models", folder, "--out", out) == 2
    one_error(capsys, "lies inside the input model folder")
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--param", "weight=["], "--param 'weight=[': the value is not a YAML scalar"),
        (["--param", "weight=!!python/name:os.system"], "the value is not a YAML scalar"),
        (["--param", "lambda=inf"], "parameter lambda: inf is not a finite number"),
        (["--param", "weight=1e400"], "parameter weight: inf is not a finite number"),
    ],
)
def test_parameters_given_as_text_are_checked_too(hf, tmp_path, capsys, args, needle):
    out = tmp_path / "o.safetensors"
    rc = merge_cli(
        "--method", "task_arithmetic", "--base", hf[0], "--models", hf[1], *args, "--out", out
    )
    assert rc == 2
    one_error(capsys, needle)
    assert not out.exists()


def test_odd_output_names(hf, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert merge_cli("--method", "linear", "--models", *hf, "--out", loop / "x.safetensors") == 2
    one_error(capsys, "cannot be resolved")
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "nowhere")
    assert merge_cli("--method", "linear", "--models", *hf, "--out", dangling) == 2
    one_error(capsys, "is a symbolic link")
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    slash = f"{tmp_path / 'x.safetensors'}/"
    assert merge_cli("--method", "linear", "--models", *hf, "--out", slash) == 2
    one_error(capsys, "a name ending in .safetensors is a file; drop the trailing slash")
    upper = tmp_path / "UP.SAFETENSORS"
    assert merge_cli("--method", "linear", "--models", *hf, "--out", upper) == 0
    assert upper.is_file() and (tmp_path / "UP.mergelab.yaml").is_file()


def test_a_shard_name_with_a_nul_byte_is_one_line(tmp_path, capsys):
    index = sharded(tmp_path, dict.fromkeys(random_state(0), "a\0.safetensors"))
    assert merge_cli("--method", "linear", "--models", index, "--out", tmp_path / "o") == 2
    one_error(capsys, "is not a file name")


def test_nothing_to_merge_is_an_error(tmp_path, hf, capsys):
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    assert merge_cli("--method", "linear", "--models", empty, empty, "--out", tmp_path / "o") == 2
    one_error(capsys, "empty.safetensors: holds no tensors; nothing to merge")
    rc = merge_cli("--method", "ties", "--base", hf[0], "--models", hf[0], "--out", tmp_path / "o")
    assert rc == 2
    one_error(capsys, "is the base and the only model")


def test_integer_tensors_that_differ_are_reported(tmp_path, capsys):
    for name, values in (("a", [1, 2, 3]), ("b", [10, 20, 30])):
        save_file(
            {"q": np.array(values, dtype=np.int64), "w": np.ones(2, np.float32)},
            str(tmp_path / f"{name}.safetensors"),
        )
    out = tmp_path / "o.safetensors"
    args = ["--models", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--out", out]
    assert merge_cli("--method", "linear", *args) == 0
    err = capsys.readouterr().err
    assert (
        "mergelab: note: 1 integer tensor(s) differ between the models and were copied from" in err
    )
    assert err.strip().endswith("(integers are never averaged): q")
    np.testing.assert_array_equal(load_file(str(out))["q"], [1, 2, 3])


def test_staging_mergelab_did_not_make_here_is_left_alone(hf, tmp_path):
    mine = tmp_path / ".mergelab-partial-777777-mine"  # a user's folder, not our pattern
    mine.mkdir()
    other_host = tmp_path / ".mergelab-partial-otherhost-1-abcdefgh"  # a merge on NFS
    other_host.mkdir()
    legacy = tmp_path / ".o.safetensors.partial-99999"
    legacy.write_text("x")
    assert (
        merge_cli("--method", "linear", "--models", *hf, "--out", tmp_path / "o.safetensors") == 0
    )
    assert mine.is_dir() and other_host.is_dir() and legacy.is_file()


def test_sizes_below_one_byte_are_refused(hf, tmp_path, capsys):
    with pytest.raises(SystemExit):
        merge_cli(
            "--method",
            "linear",
            "--models",
            *hf,
            "--out",
            tmp_path / "o",
            "--max-shard-size",
            "0.5B",
        )
    assert "is less than one byte" in capsys.readouterr().err


def test_a_closed_pipe_is_not_an_error(hf):
    cmd = (
        f"{sys.executable} -m mergelab.cli merge --dry-run --method linear "
        f"--models {hf[0]} {hf[1]} | head -c 10"
    )
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert proc.stderr == ""
