"""The HTML report: self-contained, escaped, complete, and robust to missing studies."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mergelab.report import (
    NOT_MEASURED,
    evaluate_claims,
    read_results,
    write_all,
    write_report,
    write_results,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Collect(HTMLParser):
    """Every tag with a resource attribute, and whether all tags were closed sensibly."""

    def __init__(self) -> None:
        super().__init__()
        self.resources: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action"):
                self.resources.append((tag, name, value or ""))


def parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    p.close()
    return p


@pytest.fixture
def report(full_report: SimpleNamespace) -> tuple[Path, str, pd.DataFrame]:
    assert full_report.warnings == []
    return full_report.path, full_report.text, full_report.rows


def test_report_is_one_self_contained_file(report) -> None:
    path, text, _ = report
    assert path.name == "report.html" and path.is_file()
    parsed = parse(text)
    assert parsed.resources, "figures must be embedded"
    for tag, attr, value in parsed.resources:
        assert (tag, attr) == ("img", "src")
        assert value.startswith("data:image/png;base64,")
        assert base64.b64decode(value.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert 'src="http' not in text and "file://" not in text
    assert "<script" not in text and "<link" not in text and "<a " not in text


def test_every_figure_is_embedded_and_saved(report) -> None:
    path, text, _ = report
    saved = sorted((path.parent / "figures").glob("*.png"))
    assert len(saved) == 14
    assert text.count("data:image/png;base64,") == len(saved)
    for png in saved:
        assert f"figures/{png.name}" in text
        assert base64.b64encode(png.read_bytes()).decode() in text


def test_report_states_each_claim_and_verdict(report) -> None:
    _, text, rows = report
    for c in evaluate_claims(rows):
        row = re.search(rf'<tr id="claim-{c.key}">(.*?)</tr>', text, re.S)
        assert row is not None
        assert html.escape(c.statement) in row.group(1)
        assert html.escape(c.measured) in row.group(1)
        assert f'class="verdict v-{c.verdict.replace(" ", "-")}">{c.verdict}<' in row.group(1)


def test_header_has_title_config_and_versions(report) -> None:
    _, text, rows = report
    assert "<title>Test &lt;report&gt; &amp; co</title>" in text
    assert "Test <report>" not in text
    assert "study: paper1" in text and "- cifar100" in text and "out: /tmp/x" in text
    assert "Versions: python " in text and "pandas " in text and "matplotlib " in text
    assert f"from {len(rows)} rows of the results table" in text


def test_sections_have_tables(report) -> None:
    _, text, _ = report
    for study in (
        "weights_vs_features",
        "cross_task",
        "magnitude",
        "magnitude_batches",
        "weight_stats",
        "templates",
    ):
        section = re.search(rf'<section id="{study}">(.*?)</section>', text, re.S)
        assert section is not None, study
        assert "<table" in section.group(1), study
        assert "Not run" not in section.group(1)
    wvf = re.search(r'<section id="weights_vs_features">(.*?)</section>', text, re.S).group(1)
    assert "cifar10 / vit_tiny: test accuracy (%) by N" in wvf
    assert "<th>N=10</th>" in wvf
    # Uniform Soup of the ViT at N=10 is 0.66 - 0.5 = 16.00 %.
    assert re.search(r"<th>Uniform Soup</th>\s*<td>56.00</td>.*?<td>16.00</td>", wvf, re.S)


def test_text_from_rows_is_escaped(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = build.wvf_rows(
        {("<script>alert(1)</script>", "resnet", 2): {"Uniform Soup": 0.7, "Ens Logits": 0.8}}
    )
    text = write_report(rows, tmp_path, config={"note": "</pre><b>x</b>"}).read_text()
    assert "<script>" not in text and "</pre><b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_partial_rows_still_render(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = build.cross_task_rows()
    text = write_report(rows, tmp_path).read_text()
    assert text.count("data:image/png;base64,") == 1
    assert text.count("Not run: no rows for this study.") == 5
    assert text.count(f'class="verdict v-not-measured">{NOT_MEASURED}<') >= 8
    assert "(no configuration given)" in text


def test_empty_rows_render(tmp_path: Path) -> None:
    text = write_report(pd.DataFrame(), tmp_path).read_text()
    assert "The results table is empty." in text
    assert "data:image/png;base64," not in text
    assert text.rstrip().endswith("</html>")


def test_unknown_studies_are_listed_not_dropped(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = pd.DataFrame([build.row("mergeability", "TIES", 0.5, metric="pearson_r")])
    text = write_report(rows, tmp_path).read_text()
    assert '<section id="other">' in text and "mergeability" in text and "pearson_r" in text


def test_report_is_written_atomically_over_an_old_one(build, tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text("old")
    write_report(build.template_rows(), tmp_path)
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_results_csv_round_trips(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = pd.concat([build.cross_task_rows(), build.template_rows()], ignore_index=True)
    path = write_results(rows, tmp_path)
    assert path == tmp_path / "results.csv"
    back = read_results(path)
    assert list(back.columns) == list(rows.columns)
    pd.testing.assert_series_equal(back["value"], rows["value"])
    assert back["other_dataset"].dropna().tolist() == rows["other_dataset"].dropna().tolist()


def test_write_all_writes_the_three_outputs(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = build.cross_task_rows()
    paths = write_all(rows, tmp_path, config={"a": 1})
    assert {k: p.name for k, p in paths.items()} == {
        "results": "results.csv",
        "claims": "claims.md",
        "report": "report.html",
    }
    assert all(p.is_file() for p in paths.values())
    assert "cross_task_merging_fails" in paths["claims"].read_text()


def test_claims_read_the_same_from_a_saved_csv(
    full_report: SimpleNamespace, tmp_path: Path
) -> None:
    back = read_results(write_results(full_report.rows, tmp_path))
    before = [(c.key, c.measured, c.verdict) for c in evaluate_claims(full_report.rows)]
    after = [(c.key, c.measured, c.verdict) for c in evaluate_claims(back)]
    assert after == before
