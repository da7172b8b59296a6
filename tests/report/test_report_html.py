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

from mergelab.report import NOT_MEASURED, Results, evaluate_claims, write_all, write_report
from mergelab.studies.registry import STUDIES

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
def report(full_report: SimpleNamespace) -> tuple[Path, str, Results]:
    assert full_report.warnings == []
    return full_report.path, full_report.text, full_report.results


def test_report_is_one_self_contained_file(report) -> None:
    path, text, _ = report
    assert path.name == "report.html" and path.is_file()
    parsed = parse(text)
    assert parsed.resources, "figures must be embedded"
    for tag, attr, value in parsed.resources:
        if (tag, attr) == ("a", "href"):
            assert value.startswith("#")  # in-page links only
            continue
        assert (tag, attr) == ("img", "src")
        assert value.startswith("data:image/png;base64,")
        assert base64.b64decode(value.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert 'src="http' not in text and "file://" not in text
    assert "<script" not in text and "<link" not in text


def test_every_figure_is_embedded_and_saved(report) -> None:
    path, text, _ = report
    saved = sorted((path.parent / "figures").glob("*.png"))
    assert len(saved) >= 10
    assert text.count("data:image/png;base64,") == len(saved)
    for png in saved:
        assert f"figures/{png.name}" in text
        assert base64.b64encode(png.read_bytes()).decode() in text


def test_report_states_each_claim_and_verdict(report) -> None:
    _, text, results = report
    for c in evaluate_claims(results):
        row = re.search(rf'<tr id="claim-{c.key}">(.*?)</tr>', text, re.S)
        assert row is not None
        assert html.escape(c.statement) in row.group(1)
        assert html.escape(c.measured) in row.group(1)
        assert f'class="verdict v-{c.verdict.replace(" ", "-")}">{c.verdict}<' in row.group(1)
    assert '<section id="sanity">' in text and "v-passed" in text
    assert 'class="alarm"' not in text


def test_header_has_title_config_and_versions(report) -> None:
    _, text, results = report
    assert "<title>Test &lt;report&gt; &amp; co</title>" in text
    assert "Test <report>" not in text
    assert "study: paper1" in text and "- cifar100" in text and "out: /tmp/x" in text
    assert "Versions: python " in text and "pandas " in text and "matplotlib " in text
    assert f"from {len(results.rows)} rows of the results table" in text


def test_sections_have_tables(report) -> None:
    _, text, _ = report
    for study in STUDIES:
        section = re.search(rf'<section id="{study}">(.*?)</section>', text, re.S)
        assert section is not None, study
        assert "<table" in section.group(1), study
        assert "Not run" not in section.group(1)
    wvf = re.search(r'<section id="weights_vs_features">(.*?)</section>', text, re.S).group(1)
    assert "cifar10 / vit_small: test accuracy (%) by N" in wvf
    assert "<th>N=10</th>" in wvf
    # Uniform Soup of the ViT: 0.70 - 0.04 N: 62.00 % at N=2, 30.00 % at N=10.
    assert re.search(r"<th>Uniform Soup</th>\s*<td>62.00</td>.*?<td>30.00</td>", wvf, re.S)


def test_a_failed_sanity_check_raises_the_alarm(build: SimpleNamespace, tmp_path: Path) -> None:
    results = build.weight_stats(build.Builder(), bound_broken=True).results()
    paths = write_all(results, tmp_path)
    assert paths["sanity_failures"] == ["average_variance_bound"]
    text = paths["report"].read_text()
    assert 'class="alarm"' in text and "average_variance_bound" in text
    assert "**FAILED**" in paths["claims"].read_text()


def test_text_from_rows_is_escaped(build: SimpleNamespace, tmp_path: Path) -> None:
    b = build.wvf(
        build.Builder(),
        {("<script>alert(1)</script>", "resnet", 2): {"Uniform Soup": 0.7, "Ens Logits": 0.8}},
    )
    text = write_report(b.results(), tmp_path, config={"note": "</pre><b>x</b>"}).read_text()
    assert "<script>" not in text and "</pre><b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_partial_rows_still_render(build: SimpleNamespace, tmp_path: Path) -> None:
    results = build.cross_task(build.Builder()).results()
    text = write_report(results, tmp_path).read_text()
    assert text.count("data:image/png;base64,") == 1
    assert text.count("Not run: no rows for this study.") == len(STUDIES) - 1
    assert text.count(f'class="verdict v-not-measured">{NOT_MEASURED}<') >= 8
    assert "(no configuration given)" in text


def test_empty_rows_render(tmp_path: Path) -> None:
    text = write_report(pd.DataFrame(), tmp_path).read_text()
    assert "The results table is empty." in text
    assert "data:image/png;base64," not in text
    assert text.rstrip().endswith("</html>")


def test_unknown_studies_are_listed_not_dropped(build: SimpleNamespace, tmp_path: Path) -> None:
    b = build.Builder()
    b.add("some_future_study", "TIES", 0.5, metric="pearson_r")
    text = write_report(b.results(), tmp_path).read_text()
    assert '<section id="other">' in text and "some_future_study" in text and "pearson_r" in text


def test_report_is_written_atomically_over_an_old_one(build, tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text("old")
    write_report(build.templates(build.Builder()).results(), tmp_path)
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_all_writes_every_output(build: SimpleNamespace, tmp_path: Path) -> None:
    results = build.cross_task(build.Builder()).results()
    paths = write_all(results, tmp_path, config={"a": 1})
    files = {k: p.name for k, p in paths.items() if k != "sanity_failures"}
    assert files == {
        "results": "results.csv",
        "outcomes": "outcomes.npz",
        "claims": "claims.md",
        "report": "report.html",
    }
    assert "cross_task_merging_hurts" in paths["claims"].read_text()
    assert paths["sanity_failures"] == []


def test_claims_read_the_same_from_saved_files(
    full_report: SimpleNamespace, tmp_path: Path
) -> None:
    write_all(full_report.results, tmp_path)
    back = Results.read(tmp_path)
    before = [(c.key, c.measured, c.verdict) for c in evaluate_claims(full_report.results)]
    after = [(c.key, c.measured, c.verdict) for c in evaluate_claims(back)]
    assert after == before


def test_what_was_run_lists_the_second_task_of_pairs_as_a_dataset():
    from mergelab.report.html import _run_summary

    rows = pd.DataFrame(
        {
            "study": ["mergeability"] * 2 + ["ingredients"],
            "dataset": ["mt-a", "mt-a", "digits"],
            "other_dataset": ["mt-b", "mt-c", ""],
            "arch": ["cnn"] * 3,
            "init": [""] * 3,
            "seed": [0, 0, 0],
            "n_models": [2, 2, 3],
            "value": [0.1, 0.2, 0.3],
        }
    )
    summary = _run_summary(rows).set_index("study")["datasets"].to_dict()
    assert summary == {"ingredients": "digits", "mergeability": "mt-a, mt-b, mt-c"}
