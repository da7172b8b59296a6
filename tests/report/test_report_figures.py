"""Figures: written as valid PNGs with fixed names, skipped without data, never fatal."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import matplotlib as mpl
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from mergelab.report import figures as F
from mergelab.report._common import normalize_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED = {
    "wvf_bars_resnet20.png",
    "wvf_bars_vit_tiny.png",
    "wvf_methods_vs_n_resnet20.png",
    "wvf_methods_vs_n_vit_tiny.png",
    "wvf_gap_vs_n.png",
    "cross_task.png",
    "magnitude_cifar10_resnet20.png",
    "magnitude_gap_cifar10_resnet20.png",
    "magnitude_batches_cifar10_resnet20.png",
    "weight_stats_cifar10_resnet20_n2.png",
    "templates_correlation.png",
    "templates_digits.png",
    "templates_cifar10.png",
    "kernels_cifar10_resnet20.png",
}


def assert_png(path: Path) -> np.ndarray:
    """A real PNG that matplotlib reads back, with something drawn on it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    return img


def test_every_figure_is_written_with_its_fixed_name(full_report: SimpleNamespace) -> None:
    folder = full_report.out / "figures"
    assert full_report.warnings == []
    assert {p.name for p in folder.glob("*.png")} == EXPECTED
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_figures_are_grouped_by_study(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = pd.concat([build.cross_task_rows(), build.template_rows()])
    arrays = build.write_arrays(tmp_path / "arrays")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_study = F.figures_by_study(rows, tmp_path / "figures", arrays_dir=arrays)
    assert list(by_study) == list(F.FIGURES)
    assert [p.name for p in by_study["cross_task"]] == ["cross_task.png"]
    assert [p.name for p in by_study["templates"]] == [
        "templates_correlation.png",
        "templates_cifar10.png",
        "templates_digits.png",
        "kernels_cifar10_resnet20.png",
    ]
    assert all(by_study[s] == [] for s in ("weights_vs_features", "magnitude", "weight_stats"))
    flat = F.make_figures(rows, tmp_path / "again", arrays_dir=arrays)
    assert [p.name for p in flat] == [p.name for ps in by_study.values() for p in ps]


def test_every_figure_is_a_valid_png(full_report: SimpleNamespace) -> None:
    for path in sorted((full_report.out / "figures").glob("*.png")):
        assert_png(path)


def test_drawing_is_deterministic_and_ignores_user_rc(
    build: SimpleNamespace, tmp_path: Path
) -> None:
    rows = build.paper_like_wvf()
    first = F.fig_gap_vs_n(rows, tmp_path / "a")[0].read_bytes()
    with mpl.rc_context({"axes.facecolor": "red", "lines.linewidth": 9, "font.size": 20}):
        second = F.fig_gap_vs_n(rows, tmp_path / "b")[0].read_bytes()
    assert first == second


@pytest.mark.parametrize(
    "fn",
    [
        F.fig_method_bars,
        F.fig_methods_vs_n,
        F.fig_gap_vs_n,
        F.fig_cross_task,
        F.fig_magnitude,
        F.fig_magnitude_gap,
        F.fig_magnitude_batches,
        F.fig_weight_stats,
        F.fig_template_correlation,
        F.fig_templates,
        F.fig_kernels,
    ],
    ids=lambda fn: fn.__name__,
)
@pytest.mark.parametrize("kind", ["empty", "other_study"])
def test_figures_skip_without_their_data(fn, kind: str, build: SimpleNamespace, tmp_path) -> None:
    rows = pd.DataFrame() if kind == "empty" else build.cross_task_rows()
    if fn is F.fig_cross_task and kind == "other_study":
        rows = build.template_rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(normalize_rows(rows), tmp_path / "figs") == []
    assert not (tmp_path / "figs").exists() or not list((tmp_path / "figs").iterdir())


def test_make_figures_on_no_rows_writes_nothing(tmp_path: Path) -> None:
    assert F.make_figures(pd.DataFrame(), tmp_path / "figs") == []


def test_magnitude_without_option_columns_draws_one_facet(
    build: SimpleNamespace, tmp_path: Path
) -> None:
    rows = build.magnitude_rows(options=False).drop(columns=["scaled", "tensors"])
    paths = F.fig_magnitude(normalize_rows(rows), tmp_path)
    assert [p.name for p in paths] == ["magnitude_cifar10_resnet20.png"]
    with_options = F.fig_magnitude(normalize_rows(build.magnitude_rows()), tmp_path / "o")
    one, three = assert_png(paths[0]), assert_png(with_options[0])
    assert three.shape[1] > 2 * one.shape[1]  # three option facets side by side


def test_names_are_file_safe(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = build.wvf_rows(
        {("c10", "vit/b 16:x", n): {"Uniform Soup": 0.5, "Ens Logits": 0.6} for n in (2, 5)}
    )
    paths = F.fig_method_bars(normalize_rows(rows), tmp_path)
    assert [p.name for p in paths] == ["wvf_bars_vit-b-16-x.png"]
    assert paths[0].parent == tmp_path


def test_arrays_are_found_beside_the_figures_folder(tmp_path: Path, build) -> None:
    build.write_arrays(tmp_path / "arrays")
    paths = F.fig_kernels(normalize_rows(None), tmp_path / "figures")
    assert [p.name for p in paths] == ["kernels_cifar10_resnet20.png"]
    assert_png(paths[0])


def test_unreadable_or_odd_arrays_are_skipped(tmp_path: Path) -> None:
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    (arrays / "templates_broken.npz").write_bytes(b"not an npz")
    np.savez(arrays / "templates_flat.npz", templates=np.zeros((10, 64)))  # no image shape
    np.savez(arrays / "kernels_nogrid.npz", other=np.zeros((4, 4)))
    with pytest.warns(UserWarning, match="templates_broken"):
        assert F.fig_templates(normalize_rows(None), tmp_path / "f", arrays_dir=arrays) == []
    assert F.fig_kernels(normalize_rows(None), tmp_path / "f", arrays_dir=arrays) == []


def test_a_failing_figure_does_not_stop_the_others(
    build: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
        raise RuntimeError("boom")

    monkeypatch.setitem(F.FIGURES, "cross_task", (broken, F.fig_cross_task))
    errors: list[str] = []
    with pytest.warns(UserWarning, match="broken failed: RuntimeError: boom"):
        by_study = F.figures_by_study(build.cross_task_rows(), tmp_path, errors=errors)
    assert errors == ["figure broken failed: RuntimeError: boom"]
    assert [p.name for p in by_study["cross_task"]] == ["cross_task.png"]


def test_method_colours_are_stable() -> None:
    assert F.method_color("Ens Logits") == F.method_color("Ens Logits")
    assert F.method_color("Uniform Soup") != F.method_color("Ens Logits")
    assert F.method_color("My New Merge") == F.method_color("My New Merge")
