"""Figures, tables, the HTML report and the paper's claims with verdicts.

Everything here reads one tidy results table (columns ``study, dataset, arch, n_models,
method, magnitude, split, metric, value`` plus free columns) and, for the weight
pictures, the ``arrays/*.npz`` files of the templates study. Studies may be missing:
their figures are skipped and their claims read "not measured".
"""

from mergelab.report._io import read_results, write_results
from mergelab.report.claims import (
    CLAIMS,
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
    Claim,
    ClaimSpec,
    evaluate_claims,
    write_claims_md,
)
from mergelab.report.figures import FIGURES, figures_by_study, make_figures
from mergelab.report.html import write_all, write_report
from mergelab.report.tables import Table, study_tables

__all__ = [
    "CLAIMS",
    "FIGURES",
    "NOT_MEASURED",
    "NOT_REPRODUCED",
    "REPRODUCED",
    "Claim",
    "ClaimSpec",
    "Table",
    "evaluate_claims",
    "figures_by_study",
    "make_figures",
    "read_results",
    "study_tables",
    "write_all",
    "write_claims_md",
    "write_report",
    "write_results",
]
