"""Preprocessing: decoded RGB images -> one padded, normalised batch (the reference extractor's rule).

`preprocess` follows the preset's channel order, means, resize rule and size divisibility and returns
each image's resize factor beside the `ImageList` (torchvision's `GeneralizedRCNNTransform` role).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from regions.decode import DecodedImage
from regions.presets import ChannelOrder, Preprocessing


def as_rgb_array(image: np.ndarray | DecodedImage | Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any of the accepted image holders (already decoded: see regions.decode)."""
    if isinstance(image, DecodedImage):
        return image.rgb
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    return arr


def preprocess(images: Sequence[np.ndarray], spec: Preprocessing) -> tuple[ImageList, list[float]]:
    """Decoded RGB uint8 images -> a zero-padded normalised batch, and each image's resize factor.

    The order follows the reference extractor: channel order, mean/std, bilinear resize with the
    `Preprocessing.scale_for` rule (resizing is linear, so normalising first or last is the same),
    then padding to a multiple of `size_divisibility`.
    """
    mean = torch.tensor(spec.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.pixel_std, dtype=torch.float32).view(3, 1, 1)
    tensors: list[Tensor] = []
    scales: list[float] = []
    for img in images:
        h, w = int(img.shape[0]), int(img.shape[1])
        x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W), a copy
        if spec.channel_order is ChannelOrder.BGR:
            x = x.flip(0)
        scale = spec.scale_for(h, w)
        # As cv2.resize(fx=fy=scale) in the reference: the output size is the rounded (half-to-even)
        # product, while sampling positions use `scale` itself, not the ratio of the rounded sizes.
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            x = torch.ops.aten.upsample_bilinear2d(x[None], [nh, nw], False, scale, scale)[0]
        tensors.append((x - mean) / std)
        scales.append(scale)
    div = spec.size_divisibility
    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    max_h, max_w = -(-max_h // div) * div, -(-max_w // div) * div
    batch = torch.zeros((len(tensors), 3, max_h, max_w), dtype=torch.float32)
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
    return ImageList(batch, sizes), scales
