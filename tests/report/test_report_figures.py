"""Figures: one PNG per experiment group with names that tell experiments apart, drawn
from Results and the registry, skipped without data, never fatal, never mixing
experiments into one line, bar or panel."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import matplotlib as mpl
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from mergelab.report import figures as F
from mergelab.report.frames import Results
from mergelab.studies.registry import CROSS_TASK, MAGNITUDE, STUDIES, TEMPLATES, WVF

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED = {
    "ingredients": ["ingredients_cifar10.png", "ingredients_cifar100.png"],
    "weights_vs_features": [
        "wvf_bars_resnet14.png",
        "wvf_bars_resnet8.png",
        "wvf_bars_vit_small.png",
        "wvf_methods_vs_n_resnet14.png",
        "wvf_methods_vs_n_resnet8.png",
        "wvf_methods_vs_n_vit_small.png",
        "wvf_gap_vs_n.png",
    ],
    "cross_task": ["cross_task.png"],
    "mergeability": ["mergeability.png"],
    "mergeability_fit": ["mergeability_fit.png"],
    "magnitude": [
        "magnitude_cifar10_mlp.png",
        "magnitude_cifar10_resnet8.png",
        "magnitude_gap.png",
    ],
    "magnitude_batches": ["magnitude_batches_cifar10_resnet8.png"],
    "weight_stats": [
        "weight_stats_cifar10_resnet8_independent_n2.png",
        "weight_stats_cifar10_resnet8_shared_n2.png",
    ],
    "templates": [
        "templates_correlation.png",
        "templates_cifar10.png",
        "templates_digits.png",
        "kernels_cifar10_resnet20.png",
    ],
    "multitask": ["multitask.png"],
}
ALL_FIGURES = [fn for study in STUDIES.values() for fn in study.figures]


def assert_png(path: Path) -> np.ndarray:
    """A real PNG that matplotlib reads back, with something drawn on it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    return img


def panels(fig: Figure) -> list:
    """The titled axes of a figure (twin axes and removed cells have no title)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]


def series(ax) -> list[str]:
    """Labels of the lines drawn on ``ax`` (helpers such as y=0 have none)."""
    return [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def draw(fn, results, tmp_path: Path, **kw) -> tuple[list[Path], list[tuple[Path, Figure]]]:
    with F.recording() as kept, warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = fn(results, tmp_path, **kw)
    return paths, kept


@pytest.fixture(scope="module")
def drawn(build: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Every figure of the full constructed results, drawn once; warnings recorded."""
    out = tmp_path_factory.mktemp("figures")
    arrays = build.write_arrays(out / "arrays")
    results = build.full().results()
    errors: list[str] = []
    with F.recording() as kept, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        by_study = F.figures_by_study(results, out / "figures", arrays_dir=arrays, errors=errors)
    return SimpleNamespace(
        out=out / "figures",
        by_study=by_study,
        errors=errors,
        warnings=[str(w.message) for w in caught],
        figures={p.name: fig for p, fig in kept},
        results=results,
    )


# -- the full report ---------------------------------------------------------------------


def test_every_figure_is_written_without_warnings(drawn: SimpleNamespace) -> None:
    assert drawn.errors == []
    assert drawn.warnings == []
    assert list(drawn.by_study) == list(STUDIES)
    assert {s: [p.name for p in ps] for s, ps in drawn.by_study.items()} == EXPECTED
    names = {n for ns in EXPECTED.values() for n in ns}
    assert {p.name for p in drawn.out.glob("*.png")} == names
    assert not list(drawn.out.glob(".*"))  # no temporary files left behind
    for path in sorted(drawn.out.glob("*.png")):
        assert_png(path)


def test_every_figure_function_is_registered_with_its_study() -> None:
    assert F.fig_wvf_gap in WVF.figures and F.fig_magnitude in MAGNITUDE.figures
    assert F.fig_kernels in TEMPLATES.figures and F.fig_cross_task in CROSS_TASK.figures
    assert all(study.figures for study in STUDIES.values())


def test_gap_figure_has_one_line_per_experiment_with_intervals(drawn: SimpleNamespace) -> None:
    fig = drawn.figures["wvf_gap_vs_n.png"]
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["cifar10 / shared init", "cifar100 / shared init"]
    for ax in axes:
        labels = series(ax)
        assert sorted(labels) == ["resnet14", "resnet8", "vit_small"]
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == len(labels)
    assert "95% paired bootstrap" in fig.get_suptitle()


def test_magnitude_figure_draws_the_overflow_share(drawn: SimpleNamespace) -> None:
    fig = drawn.figures["magnitude_cifar10_resnet8.png"]
    (ax,) = panels(fig)
    assert ax.get_title() == "scaled=all, bn=none, N=5"
    twins = [a for a in fig.axes if a is not ax]
    assert len(twins) == 1 and twins[0].get_ylim() == (-4.0, 104.0)
    (overflow,) = twins[0].get_lines()
    assert overflow.get_linestyle() == "--"
    assert overflow.get_ydata().max() == pytest.approx(25.0)  # 0.25 of the examples


# -- missing data, failures ---------------------------------------------------------------


@pytest.mark.parametrize("fn", ALL_FIGURES, ids=lambda fn: fn.__name__)
@pytest.mark.parametrize("kind", ["empty", "other_study"])
def test_figures_skip_without_their_data(fn, kind: str, build, tmp_path: Path) -> None:
    if kind == "empty":
        results = Results(None)
    else:
        other = build.templates if fn is F.fig_cross_task else build.cross_task
        results = other(build.Builder()).results()
    paths, _ = draw(fn, results, tmp_path / "figs")
    assert paths == []
    assert not (tmp_path / "figs").exists()


def test_make_figures_accepts_rows_and_writes_nothing_without_them(build, tmp_path) -> None:
    assert F.make_figures(pd.DataFrame(), tmp_path / "none") == []
    rows = build.cross_task(build.Builder()).results().rows
    paths = F.make_figures(rows, tmp_path / "figs")  # a DataFrame, not Results
    assert [p.name for p in paths] == ["cross_task.png"]


def test_a_failing_figure_is_reported_and_the_others_drawn(
    build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(results: Results, out_dir: Path) -> list[Path]:
        raise RuntimeError("boom")

    monkeypatch.setattr(CROSS_TASK, "figures", [broken, F.fig_cross_task])
    results = build.templates(build.cross_task(build.Builder())).results()
    errors: list[str] = []
    with pytest.warns(UserWarning, match="broken failed: RuntimeError: boom"):
        by_study = F.figures_by_study(results, tmp_path, errors=errors)
    assert errors == ["figure broken failed: RuntimeError: boom"]
    assert [p.name for p in by_study["cross_task"]] == ["cross_task.png"]
    assert [p.name for p in by_study["templates"]] == ["templates_correlation.png"]


def test_rows_that_merge_two_experiments_are_an_error_not_a_mean(build, tmp_path) -> None:
    b = build.Builder()
    for init in ("shared", "independent"):
        build.wvf(b, {("c10", "r8", 2): {"Uniform Soup": 0.5, "Ens Logits": 0.6}}, init=init)
    rows = b.results().rows.assign(init="")  # the column that told them apart is lost
    errors: list[str] = []
    with pytest.warns(UserWarning):
        by_study = F.figures_by_study(rows, tmp_path, errors=errors)
    assert by_study["weights_vs_features"] == []
    assert any("fig_wvf_bars failed: ValueError" in e for e in errors)


# -- experiments stay apart ---------------------------------------------------------------


def two_inits_two_seeds(build) -> Results:
    b = build.Builder()
    for init, drop in (("shared", 0.0), ("independent", 0.2)):
        for seed in (0, 1):
            settings = {
                ("cifar10", "resnet8", n): {
                    "Uniform Soup": 0.7 - drop - 0.01 * n + 0.005 * seed,
                    "Ens Logits": 0.8 + 0.005 * n,
                }
                for n in (2, 5)
            }
            build.wvf(b, settings, init=init, seed=seed)
    return b.results()


def test_inits_and_seeds_get_their_own_lines_panels_and_bars(build, tmp_path) -> None:
    results = two_inits_two_seeds(build)
    experiments = [f"{i} init / seed {s}" for i in ("independent", "shared") for s in (0, 1)]

    _, kept = draw(F.fig_wvf_gap, results, tmp_path)
    axes = panels(kept[0][1])  # a panel per init, a line per seed
    assert [ax.get_title() for ax in axes] == [
        "cifar10 / independent init",
        "cifar10 / shared init",
    ]
    assert [series(ax) for ax in axes] == [["resnet8, seed 0", "resnet8, seed 1"]] * 2

    _, kept = draw(F.fig_wvf_vs_n, results, tmp_path)
    assert [ax.get_title() for ax in panels(kept[0][1])] == [f"cifar10 / {e}" for e in experiments]

    _, kept = draw(F.fig_wvf_bars, results, tmp_path)
    (ax,) = kept[0][1].axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [f"cifar10\n{e.replace(' / ', chr(10))}\nN=5" for e in experiments]

    gap = F.wvf_gap(results)
    assert len(gap) == 8 and not gap.duplicated(["init", "seed", "n_models"]).any()


def test_gap_intervals_contain_the_estimate(build) -> None:
    gap = F.wvf_gap(build.paper_like_wvf(build.Builder()).results())
    assert len(gap) == 30 and gap[["low", "high"]].notna().all().all()
    assert ((gap["low"] <= gap["gap"]) & (gap["gap"] <= gap["high"])).all()
    assert (gap["high"] > gap["low"]).all()


def test_gap_without_outcome_vectors_falls_back_to_plain_lines(build, tmp_path) -> None:
    rows = build.paper_like_wvf(build.Builder()).results().rows
    gap = F.wvf_gap(rows)  # rows only: no vectors
    assert gap["low"].isna().all() and len(gap) == 30
    paths, kept = draw(F.fig_wvf_gap, rows, tmp_path)
    axes = panels(kept[0][1])
    assert len(axes) == 2
    assert all(len(series(ax)) == 3 and ax.containers == [] for ax in axes)
    assert "bootstrap" not in kept[0][1].get_suptitle()
    assert_png(paths[0])


def test_magnitude_has_one_panel_per_scaled_and_bn_option(build, tmp_path) -> None:
    b = build.Builder()
    build.magnitude(b, bn="running")
    build.magnitude(b, bn="batch")
    rows = b.results().rows
    first = rows[(rows["bn"] == "running")].assign(scaled="first")
    results = Results(pd.concat([rows, first], ignore_index=True))
    paths, kept = draw(F.fig_magnitude, results, tmp_path)
    assert [p.name for p in paths] == ["magnitude_cifar10_mlp.png", "magnitude_cifar10_resnet8.png"]
    titles = sorted(ax.get_title() for ax in panels(kept[0][1]))
    assert titles == [
        "scaled=all, bn=batch, N=5",
        "scaled=all, bn=running, N=5",
        "scaled=first, bn=running, N=5",
    ]
    for ax in panels(kept[0][1]):  # every method a line, at the largest N only
        assert series(ax) == [
            "Perf Ave",
            "Uniform Soup",
            "Greedy Soup",
            "Ens Logits",
            "Ens Features",
        ]
        assert len(ax.get_lines()[0].get_xdata()) == 12

    _, kept = draw(F.fig_magnitude_gap, results, tmp_path)  # the paper's protocol only
    assert sorted(ax.get_title() for ax in panels(kept[0][1])) == [
        "cifar10 / mlp / bn=batch",
        "cifar10 / resnet8 / bn=batch",
    ]
    assert series(panels(kept[0][1])[0]) == ["N=2", "N=5"]


def test_file_names_carry_every_varying_key(build, tmp_path: Path) -> None:
    b = build.Builder()
    build.magnitude_batches(b)
    rows = b.results().rows
    results = Results(pd.concat([rows, rows.assign(bn="batch", seed=1)], ignore_index=True))
    paths, kept = draw(F.fig_magnitude_batches, results, tmp_path)
    assert [p.name for p in paths] == [
        "magnitude_batches_cifar10_resnet8_seed0_bn-none.png",
        "magnitude_batches_cifar10_resnet8_seed1_bn-batch.png",
    ]
    assert [ax.get_title() for ax in panels(kept[0][1])] == ["N=2"]

    odd = build.wvf(
        build.Builder(),
        {("c10", "vit/b 16:x", n): {"Uniform Soup": 0.5, "Ens Logits": 0.6} for n in (2, 5)},
    )
    paths, _ = draw(F.fig_wvf_bars, odd.results(), tmp_path)
    assert [p.name for p in paths] == ["wvf_bars_vit-b-16-x.png"]
    assert paths[0].parent == tmp_path


def test_ingredients_show_each_model_and_the_disagreement(drawn: SimpleNamespace) -> None:
    (ax,) = panels(drawn.figures["ingredients_cifar10.png"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet14", "resnet8", "vit_small"]
    dots = [c for c in ax.collections if len(c.get_offsets()) == 3]
    assert len(dots) == 3  # three models per setting
    assert [t.get_text() for t in ax.texts] == ["5.0%"] * 3


def test_template_correlation_shows_the_control_and_identified_share(drawn) -> None:
    (ax,) = panels(drawn.figures["templates_correlation.png"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["classifier", "merged_two_models", "merged_halves", "grand_mean"]
    assert [t.get_text() for t in ax.texts] == ["100%", "100%", "10%"]  # no halves share


# -- style, arrays -------------------------------------------------------------------------


def test_drawing_is_deterministic_and_ignores_user_rc(build, tmp_path: Path) -> None:
    results = build.paper_like_wvf(build.Builder()).results()
    first = F.fig_wvf_gap(results, tmp_path / "a")[0].read_bytes()
    with mpl.rc_context({"axes.facecolor": "red", "lines.linewidth": 9, "font.size": 20}):
        second = F.fig_wvf_gap(results, tmp_path / "b")[0].read_bytes()
    assert first == second


def test_arrays_are_found_beside_the_figures_folder(tmp_path: Path, build) -> None:
    build.write_arrays(tmp_path / "arrays")
    paths = F.fig_kernels(Results(None), tmp_path / "figures")
    assert [p.name for p in paths] == ["kernels_cifar10_resnet20.png"]
    assert_png(paths[0])


def test_unreadable_or_odd_arrays_are_skipped(tmp_path: Path) -> None:
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    (arrays / "templates_broken.npz").write_bytes(b"not an npz")
    np.savez(arrays / "templates_flat.npz", templates=np.zeros((10, 64)))  # no image shape
    np.savez(arrays / "kernels_nogrid.npz", other=np.zeros((4, 4)))
    with pytest.warns(UserWarning, match="templates_broken"):
        assert F.fig_templates(Results(None), tmp_path / "f", arrays_dir=arrays) == []
    assert F.fig_kernels(Results(None), tmp_path / "f", arrays_dir=arrays) == []


def test_method_colours_are_stable() -> None:
    assert F.method_color("Ens Logits") == F.method_color("Ens Logits")
    assert F.method_color("Uniform Soup") != F.method_color("Ens Logits")
    assert F.method_color("B backbone + A head") != F.method_color("Model A")
    assert F.method_color("My New Merge") == F.method_color("My New Merge")
