"""Split any classifier into ``features(x) -> (B, D)`` and ``head(features) -> logits``.

Feature-space ensembles and head-only merges need the penultimate activations of very different
architectures through one interface. The split is exact: ``head(features(x)) == model(x)``.

Three mechanisms, tried in order:

* built-ins: ``forward_features`` then ``head``;
* timm models: ``forward_features`` then ``forward_head(..., pre_logits=True)``, classifier from
  ``get_classifier()``;
* everything else (torchvision ResNet / DenseNet / VGG / ViT, user models): a forward pre-hook on
  the head ``nn.Linear`` captures its input and stops the forward pass there, so ``features`` is
  by construction exactly what the last linear layer receives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mergelab.models.builtin import BuiltinClassifier

__all__ = ["FeatureHead", "find_head", "split_model"]

# Attribute names under which common model zoos keep their classifier (torchvision, timm, HF-ish).
_HEAD_ATTRS = ("fc", "classifier", "heads", "head", "last_linear", "linear")
# Modules that are the identity in eval mode and may trail the final Linear.
_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


class FeatureHead:
    """A model seen as ``head(features(x))``.

    Attributes:
        model: the wrapped model (not copied; its train/eval mode applies).
        head_module: the final ``nn.Linear``.
        head_prefix: state-dict key prefix of the head's parameters, e.g. ``"fc."``.
        feature_dim: ``D``, the head's ``in_features``.
    """

    def __init__(
        self,
        model: nn.Module,
        head_module: nn.Linear,
        head_prefix: str,
        features_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.model = model
        self.head_module = head_module
        self.head_prefix = head_prefix
        self.feature_dim = int(head_module.in_features)
        self._features_fn = features_fn

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, shape ``(B, feature_dim)``."""
        f = self._features_fn(x)
        if f.ndim != 2 or f.shape[1] != self.feature_dim:
            raise RuntimeError(
                f"features of {type(self.model).__name__} have shape {tuple(f.shape)}, expected "
                f"(B, {self.feature_dim}); the head {self.head_prefix[:-1]!r} is not applied to "
                f"flat per-sample features, so this model cannot be split there"
            )
        return f

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from features: the final linear layer."""
        return self.head_module(features)

    def __repr__(self) -> str:
        return (
            f"FeatureHead({type(self.model).__name__}, head={self.head_prefix[:-1]!r}, "
            f"feature_dim={self.feature_dim})"
        )


class _StopForward(BaseException):
    """Raised by the capture hook to skip the rest of the forward pass.

    A BaseException so a user's ``except Exception`` inside ``forward`` does not swallow it.
    """


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def _trailing_linear(module: nn.Module, name: str) -> str | None:
    """Name of the Linear that produces ``module``'s output, if it is one (through Sequentials)."""
    if isinstance(module, nn.Linear):
        return name
    if isinstance(module, nn.Sequential):
        for child_name, child in reversed(list(module.named_children())):
            if isinstance(child, _PASSTHROUGH):
                continue
            return _trailing_linear(child, f"{name}.{child_name}")
    return None


def find_head(model: nn.Module) -> str:
    """Guess the dotted name of the classifier ``nn.Linear`` of ``model``.

    Looks at ``get_classifier()`` (timm) and the usual attribute names (``fc``, ``classifier``,
    ``heads``, ``head``, ...), following trailing Sequentials (VGG's ``classifier.6``, ViT's
    ``heads.head``). Raises ``ValueError`` naming the Linear layers found otherwise.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        clf = get_classifier()
        if isinstance(clf, tuple | list):
            raise ValueError(
                f"{type(model).__name__} has {len(clf)} classifier heads (e.g. a distilled "
                f"model); its output is not one Linear of one feature vector"
            )
        if isinstance(clf, nn.Module):
            name = _trailing_linear(clf, _module_name(model, clf))
            if name is not None:
                return name
    for attr in _HEAD_ATTRS:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module):
            name = _trailing_linear(module, attr)
            if name is not None:
                return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    raise ValueError(
        f"cannot tell which layer of {type(model).__name__} is the classifier head; pass "
        f"head='<dotted name of the final nn.Linear>' (Linear layers: {linears[-5:] or 'none'})"
    )


def _hook_features(model: nn.Module, head: nn.Module, name: str) -> Callable:
    """features(x): run ``model`` until ``head`` is called and return the head's input."""

    def features(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def pre_hook(_module: nn.Module, args: tuple) -> None:
            captured.append(args[0])
            raise _StopForward

        handle = head.register_forward_pre_hook(pre_hook)
        try:
            model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                f"the head {name!r} was not called in {type(model).__name__}.forward"
            )
        return captured[0].flatten(1)

    return features


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and all(
        callable(getattr(model, a, None))
        for a in ("forward_features", "forward_head", "get_classifier")
    )


def split_model(model: nn.Module, head: str | None = None) -> FeatureHead:
    """Split ``model`` into ``features`` and a Linear ``head``: ``head(features(x)) == model(x)``.

    ``head`` is the dotted name of the final ``nn.Linear`` (e.g. ``"fc"``, ``"classifier.6"``);
    leave it ``None`` for built-ins, timm and torchvision classifiers. The split holds in eval
    mode (in train mode dropout/BatchNorm make two calls differ anyway).
    """
    name = head if head is not None else find_head(model)
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"{type(model).__name__} has no submodule {name!r}") from err
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"head {name!r} of {type(model).__name__} is a {type(module).__name__}, "
            f"expected the final nn.Linear"
        )
    prefix = f"{name}."

    features: Callable[[torch.Tensor], torch.Tensor]
    if head is None and isinstance(model, BuiltinClassifier) and name == "head":
        features = model.forward_features
    elif (
        head is None and _is_timm(model) and model.get_classifier() is module  # type: ignore[operator]
    ):

        def features(x: torch.Tensor) -> torch.Tensor:
            return model.forward_head(  # type: ignore[operator]
                model.forward_features(x),  # type: ignore[operator]
                pre_logits=True,
            )

    else:
        features = _hook_features(model, module, name)
    return FeatureHead(model, module, prefix, features)
