"""Figures, tables, the HTML report and the paper's claims with verdicts.

Everything here reads one :class:`Results`: the tidy results table (columns ``study,
dataset, arch, n_models, method, magnitude, split, metric, value`` plus each study's key
columns, see :mod:`mergelab.studies.registry`) and the per-example outcome vectors behind
its test numbers; and, for the weight pictures, the ``arrays/*.npz`` files of the
templates study. Studies may be missing: their figures are skipped and their claims read
"not measured". Importing this package does not import torch.
"""

from mergelab.report import mergeability as _mergeability  # noqa: F401  (registers)
from mergelab.report._io import read_results, write_results
from mergelab.report.claims import (
    CLAIMS,
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_MEASURED,
    REPRODUCED,
    SANITY_CHECKS,
    Claim,
    ClaimSpec,
    Sanity,
    evaluate_claims,
    run_sanity_checks,
    write_claims_md,
)
from mergelab.report.figures import figures_by_study, make_figures
from mergelab.report.frames import Results
from mergelab.report.html import write_all, write_report
from mergelab.report.tables import Table, study_tables

__all__ = [
    "CLAIMS",
    "CONTRADICTED",
    "INCONCLUSIVE",
    "NOT_MEASURED",
    "REPRODUCED",
    "SANITY_CHECKS",
    "Claim",
    "ClaimSpec",
    "Results",
    "Sanity",
    "Table",
    "evaluate_claims",
    "figures_by_study",
    "make_figures",
    "read_results",
    "run_sanity_checks",
    "study_tables",
    "write_all",
    "write_claims_md",
    "write_report",
    "write_results",
]
