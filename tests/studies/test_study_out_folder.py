"""``mergelab study --out``: a user's file of a name the study writes is refused before any
work; a rerun into the study's own folder (resume) is not."""

from __future__ import annotations

import pytest

from mergelab.cli import main
from mergelab.studies import runner


class Reached(Exception):
    """Raised where the study would start training: the folder check let it through."""


@pytest.fixture
def no_training(monkeypatch):
    def prepare(ctx, *args, **kwargs):
        (ctx.out / "runs").mkdir(exist_ok=True)
        (ctx.out / "runs" / "run.safetensors").write_text("a trained run")
        raise Reached

    monkeypatch.setattr(runner.StudyContext, "prepare", prepare)


@pytest.mark.parametrize("name", ["results.csv", "report.html", "outcomes.npz", "figures/a.png"])
def test_a_users_file_is_refused_before_any_work(tmp_path, capsys, no_training, name):
    out = tmp_path / "mine"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("USER")
    assert main(["study", "tiny", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {out / name}: not written by mergelab, which would replace it; "
        f"move it away or choose another --out"
    ]
    assert (out / name).read_text() == "USER"
    assert not (out / ".mergelab-output").exists()


def test_a_rerun_into_the_studys_own_folder_goes_on(tmp_path, no_training):
    out = tmp_path / "out"
    with pytest.raises(Reached):
        runner.run_study("tiny", out, progress=False)
    assert (out / ".mergelab-output").read_text() == "# mergelab study output\n"
    (out / "results.csv").write_text("from the first run")  # as a finished run leaves it
    (out / "runs" / "run.safetensors").unlink()
    with pytest.raises(Reached):
        runner.run_study("tiny", out, progress=False)
    assert (out / "results.csv").read_text() == "from the first run"
