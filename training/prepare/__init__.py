"""`python -m training.prepare`: a user's dataset in its official format -> a data root training reads.

One module per format: `vqa.py` (VQA v2: questions / annotations JSON), `refcoco.py` (the refer
format of RefCOCO / RefCOCO+ / RefCOCOg: refs pickle + instances JSON, with GT-box features),
`nlvr2.py` and `snli_ve.py` (their JSON lines); `common.py` holds what any format needs (image files
matched to the annotations' image ids, region features extracted into the LMDB the loaders read,
the held-out images or pairs, the root's `loader_config.json` and `prepare.json`, the loader check).
"""
