"""The one results table every study writes and every report reads."""

RESULT_COLUMNS = (
    "study",
    "dataset",
    "arch",
    "n_models",
    "method",
    "magnitude",
    "split",
    "metric",
    "value",
)
"""The fixed leading columns of ``results.csv``; studies add free columns after them."""
