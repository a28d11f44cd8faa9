"""Region extraction: safe image decoding, detector presets, region features and their LMDB store.

Modules, in data-flow order: `decode` (bytes -> RGB, typed errors), `presets` (one declared object
per detector), `transform` (images -> one padded batch), the detector parts `backbone` (ResNet/ResNeXt
body + FPN), `rpn` (anchors, box coder, proposals) and `roi_heads` (box head, attribute head, the
reference box selection), `detector` (the model composed from those parts), `extractor`
(`RegionExtractor`, `ImageRegions`), `weights` (save/load) with `maskrcnn_import` (the 12-in-1
extractor's checkpoint format), `inputs` (global-first features and 5-d locations), `store` (the
reference LMDB layout), `train` / `extract` (command lines).
Importing the package imports nothing heavy; import the module you need.
"""

from vilbert.threads import fair_share

fair_share()  # before anything imports torch: OpenMP threads wait without spinning (vilbert/threads.py)
