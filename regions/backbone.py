"""The backbone: a ResNet/ResNeXt body under torchvision's FPN (`BackboneWithFPN`).

`build_backbone(spec)` gives P2..P5 under the names in `FPN_LEVELS`, plus "pool" (P6, a max-pool of
P5 that only the RPN reads).  Bottleneck presets use torchvision's `ResNet` class itself (ResNeXt-152
32x8d for the 12-in-1 extractor); the synthetic preset a narrow `SmallResNet` of BasicBlocks.

`fold_frozen_bn(module)` and `inference_copy(module)` give inference-only copies (batch norms folded
into the convolutions before them, optionally channels-last) for region extraction; training keeps the
modules `build_backbone` made.
"""

from __future__ import annotations

import copy
import itertools
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from regions.presets import BackboneSpec, BlockKind, NormKind

FPN_LEVELS = ("0", "1", "2", "3")  # BackboneWithFPN's names for P2..P5 ("pool" is P6, RPN only)


class SmallResNet(nn.Module):
    """A narrow ResNet body from torchvision BasicBlocks (the synthetic preset's backbone).

    Children are registered in execution order with torchvision ResNet's names (conv1, bn1, relu,
    maxpool, layer1..4) so `BackboneWithFPN`'s IntermediateLayerGetter can run it unchanged.
    """

    def __init__(self, spec: BackboneSpec, norm_layer: Any) -> None:
        super().__init__()
        k = spec.stem_kernel
        self.conv1 = nn.Conv2d(3, spec.stem_channels, kernel_size=k, stride=2, padding=k // 2, bias=False)
        self.bn1 = norm_layer(spec.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = spec.stem_channels
        for i, (planes, count) in enumerate(zip(spec.stage_channels, spec.block_counts), start=1):
            stride = 1 if i == 1 else 2
            blocks: list[nn.Module] = []
            for b in range(count):
                s = stride if b == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes, 1, stride=s, bias=False), norm_layer(planes)
                    )
                blocks.append(BasicBlock(inplanes, planes, s, downsample, norm_layer=norm_layer))
                inplanes = planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_body(spec: BackboneSpec) -> nn.Module:
    """The ResNet-family body of a preset (before the FPN)."""
    if spec.norm is NormKind.FROZEN_BN:
        norm_layer: Any = partial(FrozenBatchNorm2d, eps=spec.frozen_bn_eps)
    else:
        norm_layer = nn.BatchNorm2d
    if spec.block is BlockKind.BOTTLENECK:
        # ResNeXt-152 32x8d is torchvision's ResNet class with Bottleneck blocks [3, 8, 36, 3],
        # groups=32, width_per_group=8 (torchvision ships 50/101 only).  Its avgpool/fc are dropped by
        # BackboneWithFPN's IntermediateLayerGetter, which stops after layer4.
        if spec.stem_channels != 64 or spec.stem_kernel != 7:
            raise ValueError("torchvision's ResNet class has a 64-channel 7x7 stem")
        return ResNet(
            Bottleneck,
            list(spec.block_counts),
            groups=spec.groups,
            width_per_group=spec.width_per_group,
            norm_layer=norm_layer,
        )
    return SmallResNet(spec, norm_layer)


def build_backbone(spec: BackboneSpec) -> BackboneWithFPN:
    """The preset's body with the FPN on layer1..layer4 and a max-pooled P6."""
    return BackboneWithFPN(
        build_body(spec),
        return_layers={f"layer{i + 1}": name for i, name in enumerate(FPN_LEVELS)},
        in_channels_list=list(spec.stage_channels),
        out_channels=spec.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _is_batch_norm(m: nn.Module) -> bool:
    """A norm with fixed per-channel statistics at inference (nn.BatchNorm2d without running stats
    normalises by each batch's own: not foldable)."""
    return isinstance(m, FrozenBatchNorm2d | nn.BatchNorm2d) and getattr(m, "running_var", None) is not None


def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The per-channel (scale, shift) of a batch norm's inference arithmetic, in float64:
    y = x * scale + shift, scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale
    (FrozenBatchNorm2d's own formula; nn.BatchNorm2d's in eval mode)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight * (var + bn.eps).rsqrt()
    return scale, bias - mean * scale


def _folded_conv(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A convolution (with bias) computing bn(conv(x)) in one step."""
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(weight.to(conv.weight.dtype))
        out.bias.copy_(bias.to(conv.weight.dtype))  # type: ignore[union-attr]
    return out


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) child names of `parent` where the norm is applied right after the conv.

    Two layouts: consecutive children of an `nn.Sequential` (torchvision's downsample), and the
    `convK` / `bnK` pairs of torchvision's ResNet stem, Bottleneck and BasicBlock (and `SmallResNet`),
    whose forward applies `bnK` to `convK`'s output and nothing in between.
    """
    children = dict(parent.named_children())
    if isinstance(parent, nn.Sequential):
        return [
            (a, b)
            for (a, conv), (b, bn) in itertools.pairwise(children.items())
            if isinstance(conv, nn.Conv2d) and _is_batch_norm(bn)
        ]
    return [
        ("conv" + name[2:], name)
        for name, child in children.items()
        if name.startswith("bn")
        and _is_batch_norm(child)
        and isinstance(children.get("conv" + name[2:]), nn.Conv2d)
    ]


def fold_frozen_bn(module: nn.Module) -> nn.Module:
    """A copy of `module` with each batch norm folded into the convolution it follows, for inference.

    conv -> FrozenBatchNorm2d (or an eval-mode nn.BatchNorm2d) becomes one convolution with weight
    W * scale and bias b * scale + shift (computed in float64, stored in the weights' dtype); the norm
    becomes `nn.Identity`.  The arithmetic is the same up to float rounding, and two full passes over
    every activation (the norm's multiply and add) are gone.  `module` itself is not changed (training
    and saving keep the frozen norms and their state-dict names).  A norm in training mode cannot be
    folded: ValueError.  Norms without a conv right before them stay as they are.
    """
    bad = [
        n
        for n, m in module.named_modules()
        if _is_batch_norm(m) and m.training and isinstance(m, nn.BatchNorm2d)
    ]
    if bad:
        raise ValueError(f"batch norms in training mode cannot be folded (call .eval() first): {bad[:3]}")
    folded = copy.deepcopy(module)
    for parent in list(folded.modules()):
        for conv_name, bn_name in _conv_bn_pairs(parent):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            setattr(parent, conv_name, _folded_conv(conv, bn))
            setattr(parent, bn_name, nn.Identity())
    return folded


def inference_copy(module: nn.Module, *, fold_bn: bool = True, channels_last: bool = False) -> nn.Module:
    """An eval-mode, gradient-free copy of `module` for extraction: batch norms folded
    (`fold_frozen_bn`) and/or weights in channels-last memory format (then feed it channels-last
    inputs: oneDNN convolves NHWC without reordering every activation).  `module` is not changed."""
    # Normal (not inference-mode) tensors, so the copy also runs outside `torch.inference_mode()`.
    with torch.inference_mode(False), torch.no_grad():
        out = fold_frozen_bn(module) if fold_bn else copy.deepcopy(module)
        if channels_last:
            out = out.to(memory_format=torch.channels_last)
    return out.eval().requires_grad_(False)
