"""Region extraction: safe image decoding, detector presets, region features and their LMDB store.

Modules: `decode` (bytes -> RGB, typed errors), `presets` (one declared object per detector),
`detector` (torchvision Faster R-CNN parts, the reference box selection, `RegionExtractor`),
`maskrcnn_import` (the 12-in-1 extractor's checkpoint format), `inputs` (global-first features and
5-d locations), `store` (the reference LMDB layout), `train` / `extract` (command lines).
Importing the package imports nothing heavy; import the module you need.
"""
