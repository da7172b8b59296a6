"""Build any classifier by name: built-ins, torchvision (``tv:``) and timm (``timm:``).

Weights are never downloaded here (``weights=None`` / ``pretrained=False``): in mergelab the
weights always come from the user's checkpoint, see :func:`mergelab.models.load_weights`.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from mergelab.models.builtin import BUILTINS, build_builtin

__all__ = ["build_model", "torchvision_classifiers"]


@functools.cache
def torchvision_classifiers() -> frozenset[str]:
    """Names of torchvision's classification models (not detection, segmentation or video)."""
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _timm_has(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(name))


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Swap the first Conv2d for a freshly initialised one taking ``in_chans`` channels.

    torchvision models hard-code 3 input channels; the stem is the first Conv2d registered.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(f"cannot adapt grouped first conv {name!r} to in_chans={in_chans}")
            new = nn.Conv2d(
                in_chans,
                module.out_channels,
                module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to in_chans={in_chans}")


def _build_torchvision(
    name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: Any
) -> nn.Module:
    import torchvision

    if name not in torchvision_classifiers():
        raise ValueError(
            f"unknown torchvision classifier {name!r}; "
            f"see torchvision.models.list_models(module=torchvision.models)"
        )
    if name.startswith("vit_"):
        kwargs.setdefault("image_size", img_size)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        _replace_first_conv(model, in_chans)
    return model


def _build_timm(
    name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: Any
) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ImportError("timm models need timm: pip install 'mergelab[models]'") from err
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans, **kwargs}
    kwargs["pretrained"] = False  # weights only ever come from the user's checkpoint
    if "img_size" not in kwargs:
        try:
            return timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError as err:
            # Convolutional models take any size and reject the argument; retry without it.
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, **kwargs)


def build_model(
    arch: str, num_classes: int, *, in_chans: int = 3, img_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Build an untrained classifier by name.

    ``arch`` is a built-in (``linear``, ``mlp``, ``cnn``, ``resnet8``/``resnet_small``,
    ``resnet14``, ``resnet20``, ``vit_small``),
    ``tv:<name>`` for torchvision, ``timm:<name>`` for timm, or a bare name resolved in that
    order. Extra ``kwargs`` go to the underlying constructor. Nothing is downloaded.
    """
    prefix, sep, name = arch.partition(":")
    if sep:
        if prefix in ("tv", "torchvision"):
            return _build_torchvision(name, num_classes, in_chans, img_size, **kwargs)
        if prefix == "timm":
            return _build_timm(name, num_classes, in_chans, img_size, **kwargs)
        raise ValueError(f"unknown model source {prefix!r} in {arch!r}; use 'tv:' or 'timm:'")
    if arch in BUILTINS:
        return build_builtin(arch, num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    if arch in torchvision_classifiers():
        return _build_torchvision(arch, num_classes, in_chans, img_size, **kwargs)
    if _timm_has(arch):
        return _build_timm(arch, num_classes, in_chans, img_size, **kwargs)
    raise ValueError(
        f"unknown architecture {arch!r}: built-ins are {', '.join(BUILTINS)}; "
        f"for other models use 'tv:<torchvision name>' or 'timm:<timm name>'"
    )
