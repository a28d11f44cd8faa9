"""What the gateway calls on its region extractor and its tokenizer (structural types).

`regions.extractor.RegionExtractor` and `vilbert.tokenizer.WordPieceTokenizer` satisfy these; tests
and benches may pass anything with the same methods and attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Detections(Protocol):
    """One image's regions as the extractor returns them (`regions.extractor.ImageRegions`)."""

    @property
    def image_w(self) -> int: ...
    @property
    def image_h(self) -> int: ...
    @property
    def boxes(self) -> np.ndarray: ...  # (N, 4) x1y1x2y2 in image pixels
    @property
    def features(self) -> np.ndarray: ...  # (N, D)
    @property
    def objects(self) -> np.ndarray: ...  # (N,) detector class index
    @property
    def object_scores(self) -> np.ndarray: ...  # (N,)


class Extractor(Protocol):
    """The region extractor: detections of whole images, and features at given boxes.

    An optional ``preset.class_names`` names the detector's classes (region labels in answers)."""

    def extract(self, images: Sequence[np.ndarray]) -> Sequence[Detections]: ...

    def extract_at_boxes(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
    ) -> Sequence[Detections]: ...


class Encoding(Protocol):
    """A tokenized batch (`vilbert.tokenizer.Encoded`): both (B, L) int64."""

    @property
    def input_ids(self) -> np.ndarray: ...
    @property
    def attention_mask(self) -> np.ndarray: ...


class Tokenizer(Protocol):
    """The text tokenizer: texts -> ids and mask, truncated to `max_tokens`."""

    def encode_batch(self, texts: list[str], max_tokens: int) -> Encoding: ...
