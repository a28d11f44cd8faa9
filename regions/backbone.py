"""The backbone: a ResNet/ResNeXt body under torchvision's FPN (`BackboneWithFPN`).

`build_backbone(spec)` gives P2..P5 under the names in `FPN_LEVELS`, plus "pool" (P6, a max-pool of
P5 that only the RPN reads).  Bottleneck presets use torchvision's `ResNet` class itself (ResNeXt-152
32x8d for the 12-in-1 extractor); the synthetic preset a narrow `SmallResNet` of BasicBlocks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

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
