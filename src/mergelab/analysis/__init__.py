"""The explanations of "Rethinking Weight-Averaged Model-merging" as plain functions.

* templates: linear classifier rows as images, class means, their correlation, mixed
  halves and averaged classifiers, first-layer kernel grids.
* magnitude: scale models' weights by the paper's factors.
* weight_stats: max |w| and variance per layer, of models and of their average.
"""

from mergelab.analysis.magnitude import FACTORS, is_scaled, scale_models, scale_state_dict
from mergelab.analysis.templates import (
    averaged_templates,
    class_means,
    correlation_matrix,
    half_mixed_templates,
    identified,
    kernel_grid,
    linear_templates,
    merged_templates,
    own_class_margin,
    template_correlation,
    tile_images,
)
from mergelab.analysis.weight_stats import layer_stats, stats_frame

__all__ = [
    "FACTORS",
    "averaged_templates",
    "class_means",
    "correlation_matrix",
    "half_mixed_templates",
    "identified",
    "is_scaled",
    "kernel_grid",
    "layer_stats",
    "linear_templates",
    "merged_templates",
    "own_class_margin",
    "scale_models",
    "scale_state_dict",
    "stats_frame",
    "template_correlation",
    "tile_images",
]
