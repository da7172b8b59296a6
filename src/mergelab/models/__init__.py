"""Build any classifier by name and split it uniformly into features + head.

* :func:`build_model` - built-ins (``linear``, ``mlp``, ``cnn``, ``resnet8``/``resnet14``/
  ``resnet20`` (``resnet_small`` = ``resnet8``), ``vit_small``), torchvision (``tv:``) and
  timm (``timm:``); never downloads weights.
* :func:`split_model` - ``FeatureHead`` with ``head(features(x)) == model(x)``.
* :func:`load_weights` - load a checkpoint with an error listing every key/shape difference.
* :func:`count_params`, :func:`count_flops` - size and compute.
"""

from mergelab.models.builtin import BUILTINS, BuiltinClassifier
from mergelab.models.cost import count_flops, count_params
from mergelab.models.registry import build_model
from mergelab.models.split import FeatureHead, find_head, split_model
from mergelab.models.weights import load_weights, read_checkpoint

__all__ = [
    "BUILTINS",
    "BuiltinClassifier",
    "FeatureHead",
    "build_model",
    "count_flops",
    "count_params",
    "find_head",
    "load_weights",
    "read_checkpoint",
    "split_model",
]
