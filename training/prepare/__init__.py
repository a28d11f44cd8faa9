"""`python -m training.prepare`: a user's dataset in its official format -> a data root training reads.

`vqa.py` handles VQA v2 (questions / annotations JSON and a folder of images); `common.py` what any
format needs (image files matched to the annotations' image ids, region features extracted into
the LMDB the loaders read, the held-out images, the root's `loader_config.json` and `prepare.json`).
"""
