"""One self-contained HTML report: header, claims with verdicts, a section per study.

Everything is read from the tidy results table (plus the arrays folder for the weight
pictures). Figures are embedded as base64 PNG data URIs, so the single file can be
mailed or archived; they are also kept as ``figures/*.png``. There are no scripts, no
external style sheets, no links. Text from the rows and the config is escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import importlib.metadata
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mergelab.report._io import atomic_write_text, read_results, write_results
from mergelab.report.claims import (
    Claim,
    Sanity,
    evaluate_claims,
    papers_not_run,
    run_sanity_checks,
    sanity_label,
    seed_note,
    write_claims_md,
)
from mergelab.report.figures import figures_by_study
from mergelab.report.frames import Results
from mergelab.report.tables import Table, study_tables
from mergelab.results import OUTCOMES_FILE, write_outcomes
from mergelab.studies.registry import PAPERS, STUDIES, papers_of

__all__ = ["read_results", "write_all", "write_report", "write_results"]

DEFAULT_TITLE = "mergelab: the papers' findings, reproduced"

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.text,th.text{text-align:left}
table.claims td{text-align:left}
.verdict{font-weight:bold;white-space:nowrap;padding:.1em .4em;border-radius:3px}
.v-reproduced,.v-passed{background:#d9f2d9;color:#1b5e20}
.v-contradicted,.v-FAILED{background:#fbdcdc;color:#8e1b1b}
.v-inconclusive{background:#fff3cd;color:#7a5b00}
.v-not-measured,.v-not-run{background:#eeeeee;color:#555}
.alarm{border:2px solid #8e1b1b;background:#fbdcdc;padding:.5em 1em;color:#8e1b1b}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#666}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
.note{color:#666;font-size:.85em}.error{color:#8e1b1b}
footer{margin-top:3em;border-top:1px solid #ccc;padding-top:.5em;color:#666;font-size:.8em}
.scroll{overflow-x:auto}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing torch would be slow)."""
    out = {"python": platform.python_version()}
    for name in ("mergelab", "torch", "numpy", "pandas", "matplotlib"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _plain(value: Any) -> Any:
    """Config values as YAML-safe plain types (paths, tuples, enums become text/lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    return str(value)


def _config_yaml(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "(no configuration given)"
    return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True).strip()


def _run_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per study: how many rows, and which datasets, architectures, model counts."""

    def join(values: pd.Series) -> str:
        vals = [v for v in pd.unique(values) if isinstance(v, str) and v]
        return ", ".join(sorted(vals)) or "–"

    def counts(values: pd.Series) -> str:
        ns = sorted(int(v) for v in values.dropna().unique() if float(v).is_integer())
        return ", ".join(map(str, ns)) or "–"

    if rows.empty:
        return pd.DataFrame(columns=["study", "rows", "datasets", "architectures", "N"])
    summary = (
        rows.groupby("study", sort=True)
        .agg(
            rows=("value", "size"),
            datasets=("dataset", join),
            architectures=("arch", join),
            inits=("init", join),
            seeds=("seed", counts),
            N=("n_models", counts),
        )
        .reset_index()
    )
    if "other_dataset" in rows:  # a pair's second task counts as a dataset the study used
        both = pd.concat(
            [
                rows[["study", "dataset"]],
                rows[["study", "other_dataset"]].set_axis(["study", "dataset"], axis=1),
            ]
        )
        used = both.groupby("study", sort=True)["dataset"].agg(join)
        summary["datasets"] = summary["study"].map(used)
    return summary


def _frame_html(table: Table) -> str:
    """An escaped HTML table (pandas escapes cell text and labels)."""
    fmt = table.fmt

    def number(v: float) -> str:
        return "–" if pd.isna(v) else fmt.format(v)

    body = table.frame.to_html(
        escape=True, na_rep="–", float_format=number, border=0, classes="data", index=table.index
    )
    head = f"<h3>{_e(table.title)}</h3>\n" if table.title else ""
    note = f'<p class="note">{_e(table.note)}</p>' if table.note else ""
    return f'{head}<div class="scroll">{body}</div>\n{note}'


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = _e(path.name)
    return (
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>figures/{name}</figcaption></figure>"
    )


def _verdict_html(verdict: str) -> str:
    cls = "v-" + verdict.replace(" ", "-")
    return f'<span class="verdict {_e(cls)}">{_e(verdict)}</span>'


def _sanity_html(checks: list[Sanity]) -> str:
    if not checks:
        return ""
    rows = "".join(
        f"<tr><td>{_e(s.statement)}</td><td>{_e(s.measured)}</td>"
        f"<td>{_verdict_html(sanity_label(s))}</td></tr>"
        for s in checks
    )
    parts = [
        '<section id="sanity"><h2>Sanity checks</h2>',
        '<p class="note">These hold by construction, so they are not findings; a failure '
        "means a defect in the code or the data, and the study exits with an error.</p>",
        '<table class="claims"><thead><tr><th class="text">Check</th>'
        '<th class="text">Measured here</th><th class="text">Result</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>",
    ]
    for s in checks:
        if s.details is not None and not s.details.empty:
            parts.append(
                _frame_html(
                    Table(f"{s.key}: violations", s.details.head(200), fmt="{:.4g}", index=False)
                )
            )
    parts.append("</section>")
    return "\n".join(parts)


def _claims_html(claims: list[Claim], note: str = "") -> str:
    claims, not_run = papers_not_run(claims)
    note = " ".join(n for n in (note, not_run) if n)
    head = (
        '<table class="claims"><thead><tr><th class="text">Finding</th>'
        '<th class="text">Measured here</th><th class="text">Verdict</th></tr></thead><tbody>'
    )
    body = "".join(
        f'<tr id="claim-{_e(c.key)}"><td>{_e(c.statement)}</td><td>{_e(c.measured)}</td>'
        f"<td>{_verdict_html(c.verdict)}</td></tr>"
        for c in claims
    )
    parts = [
        head + body + "</tbody></table>",
        '<p class="note">Each verdict is computed from this run\'s results: the pooled effect '
        "with its 95 % paired bootstrap interval (test examples resampled, and seeds when "
        "there are several; for the mergeability claims, the range over refits each "
        "without one task) and the count of settings that support the finding, contradict "
        "it, or cannot tell. <b>reproduced</b>: the interval lies on the paper's side; "
        "<b>contradicted</b>: it lies on the other side; <b>inconclusive</b>: the noise is "
        "larger than the effect; <b>not measured</b>: the study did not run.</p>",
        f'<p class="note">{_e(note)}</p>' if note else "",
    ]
    for c in claims:
        inner = [f"<p>{_e(c.statement)}</p>"]
        if c.paper:
            inner.append(f"<p><b>Paper:</b> {_e(c.paper)}</p>")
        inner.append(f"<p><b>Measured here:</b> {_e(c.measured)} {_verdict_html(c.verdict)}</p>")
        if c.details is not None and not c.details.empty:
            frame = c.details if len(c.details) <= 200 else c.details.head(200)
            note = "" if frame is c.details else f"first 200 of {len(c.details)} rows"
            inner.append(_frame_html(Table("Details", frame, note, "{:.4g}", index=False)))
        parts.append(
            f"<details><summary>{_e(c.key)}: {_verdict_html(c.verdict)}</summary>"
            + "\n".join(inner)
            + "</details>"
        )
    return "\n".join(parts)


def write_report(
    results: Results | pd.DataFrame,
    out_dir: Path,
    *,
    title: str = DEFAULT_TITLE,
    config: Mapping[str, Any] | None = None,
    arrays_dir: Path | None = None,
    claims: list[Claim] | None = None,
    sanity: list[Sanity] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/figures/*.png``.

    ``arrays_dir`` holds the ``*.npz`` pictures (default: ``out_dir/arrays``); ``claims``
    and ``sanity`` default to every claim and check evaluated on ``results``. Studies
    without rows still get a section that says so, and claims without data read "not
    measured".
    """
    out_dir = Path(out_dir)
    results = Results.of_rows(results)
    rows = results.rows
    fig_errors: list[str] = []
    figures = figures_by_study(
        results,
        out_dir / "figures",
        arrays_dir=arrays_dir if arrays_dir is not None else out_dir / "arrays",
        errors=fig_errors,
    )
    tables = study_tables(results)
    claims = evaluate_claims(results) if claims is None else claims
    sanity = run_sanity_checks(results) if sanity is None else sanity
    failed = [s for s in sanity if s.passed is False]
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    summary = _run_summary(rows)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
    ]
    if failed:
        parts.append(
            '<p class="alarm"><b>Sanity checks failed:</b> '
            + _e(", ".join(s.key for s in failed))
            + ". These hold by construction; the numbers below come from defective code or "
            'data. See <a href="#sanity">Sanity checks</a>.</p>'
        )
    parts += [
        "<p>Reproduction of the findings of "
        + "; and of ".join(
            f"&ldquo;{_e(p)}&rdquo;: {_e(PAPERS[p])}"
            for p in papers_of(rows["study"].unique() if "study" in rows else []) or list(PAPERS)
        )
        + ".</p>",
        "<h3>What was run</h3>",
        _frame_html(Table("", summary, index=False))
        if not summary.empty
        else "<p>The results table is empty.</p>",
        f"<details><summary>Configuration</summary><pre>{_e(_config_yaml(config))}</pre></details>",
        f'<p class="note">Versions: {_e(versions)}. Generated {_e(generated)}.</p></header>',
        '<section id="claims"><h2>Claims and verdicts</h2>',
        _claims_html(claims, seed_note(results) if not rows.empty else ""),
        "</section>",
        _sanity_html(sanity),
    ]
    if fig_errors:
        parts.append(
            '<section id="figure-errors"><h2>Figures that failed</h2><ul>'
            + "".join(f'<li class="error">{_e(m)}</li>' for m in fig_errors)
            + "</ul></section>"
        )
    for name, study in STUDIES.items():
        parts.append(
            f'<section id="{_e(name)}"><h2>{_e(study.heading)}</h2><p>{_e(study.blurb)}</p>'
        )
        figs, tabs = figures.get(name, []), tables.get(name, [])
        if not figs and not tabs and not (rows["study"] == name).any():
            parts.append('<p class="note">Not run: no rows for this study.</p>')
        parts += [_figure_html(p) for p in figs]
        parts += [_frame_html(t) for t in tabs]
        parts.append("</section>")
    other = rows[~rows["study"].isin(list(STUDIES))]
    if not other.empty:
        counts = other.groupby(["study", "method", "metric"]).agg(
            rows=("value", "size"), mean=("value", "mean")
        )
        parts += [
            '<section id="other"><h2>Other rows</h2>',
            _frame_html(Table("Rows of studies this report has no section for", counts)),
            "</section>",
        ]
    parts += [
        f"<footer>Generated by mergelab {_e(_versions()['mergelab'])} from {len(rows)} rows "
        f"of the results table and {len(results.outcomes)} outcome vectors. Every number, "
        "figure and verdict above is computed from them.</footer>",
        "</body></html>",
    ]
    return atomic_write_text(out_dir / "report.html", "\n".join(parts) + "\n")


def write_all(
    results: Results | pd.DataFrame,
    out_dir: Path,
    *,
    title: str = DEFAULT_TITLE,
    config: Mapping[str, Any] | None = None,
    arrays_dir: Path | None = None,
) -> dict[str, Any]:
    """``results.csv``, ``outcomes.npz``, ``claims.md`` and ``report.html`` (with figures)
    in ``out_dir``; also, under ``sanity_failures``, the keys of failed sanity checks."""
    out_dir = Path(out_dir)
    results = Results.of_rows(results)
    claims = evaluate_claims(results)
    sanity = run_sanity_checks(results)
    return {
        "results": write_results(results.rows, out_dir),
        "outcomes": write_outcomes(results.outcomes, out_dir / OUTCOMES_FILE),
        "claims": write_claims_md(claims, out_dir / "claims.md", sanity, seed_note(results)),
        "report": write_report(
            results,
            out_dir,
            title=title,
            config=config,
            arrays_dir=arrays_dir,
            claims=claims,
            sanity=sanity,
        ),
        "sanity_failures": [s.key for s in sanity if s.passed is False],
    }
