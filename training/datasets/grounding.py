"""Grounding and pointing loaders: RefCOCO / RefCOCO+ / RefCOCOg, Visual7W, GuessWhat?!
in the reference's formats.

Referring expressions score every region by IoU with the referent: training merges detections
with the image's GT boxes and zeroes IoU below 0.5; evaluation uses detections only and the raw
IoU (the metric counts IoU > 0.5).  Pointing tasks (Visual7W, GuessWhat) always merge, and choose
among candidate GT boxes that sit after the detection block (row 101 on, in the reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from training.datasets.base import TaskDataset, read_jsonl, read_pickle, single_pair_text
from training.datasets.example import Example
from training.datasets.layout import Source
from training.datasets.regions import (
    RegionRows,
    iou_plus_one,
    merged_rows,
    plain_rows,
    stack_pairs,
    xywh_to_xyxy,
)


@dataclass
class GroundingEntry:
    example_id: str  # sent_id (RefCOCO), qa_id (Visual7W), dialog id (GuessWhat)
    image_id: str  # feature key
    text: str
    ref_box: np.ndarray  # (4,) x1,y1,x2,y2 pixels
    ref_id: int  # ann_id / answer box id / target object id
    mc_idx: list[int] = field(default_factory=list)  # pointing: candidate positions among the GT rows
    clean_id: int | None = None  # integer image id the clean split compares


class GroundingDataset(TaskDataset[GroundingEntry]):
    """One loader for the five grounding/pointing tasks; the reader is chosen by file format."""

    def read_entries(self) -> list[GroundingEntry]:
        match self.layout.source:
            case Source.REFER:
                return self._read_refer()
            case Source.VISUAL7W:
                return self._read_visual7w()
            case Source.GUESSWHAT:
                return self._read_guesswhat()
            case other:
                raise ValueError(f"GroundingDataset cannot read {other}")

    @property
    def is_pointing(self) -> bool:
        return self.task.num_candidates > 0

    # -- readers --------------------------------------------------------------------------------
    def _read_refer(self) -> list[GroundingEntry]:
        folder = self.dataroot / self.layout.refer_name
        refs = read_pickle(folder / f"refs({self.layout.refer_split_by}).p")
        instances = json.loads((folder / "instances.json").read_text())
        anns = {a["id"]: a for a in instances["annotations"]}

        def selected(ref_split: str) -> bool:
            # REFER's split selection: "test" means every test split (testA/testB for UNC).
            if self.split == "test":
                return "test" in ref_split
            return ref_split == self.split

        entries = []
        for ref in refs:
            if not selected(ref["split"]):
                continue
            box = xywh_to_xyxy(anns[ref["ann_id"]]["bbox"])
            for sent in ref["sentences"]:
                entries.append(
                    GroundingEntry(
                        str(sent["sent_id"]),
                        str(ref["image_id"]),
                        sent["raw"],
                        box,
                        int(ref["ann_id"]),
                        clean_id=int(ref["image_id"]),
                    )
                )
        if not entries:
            splits = sorted({r["split"] for r in refs})
            raise ValueError(f"{self.task.slug}: no refs in split {self.split!r}; the file has {splits}")
        return entries

    def _read_visual7w(self) -> list[GroundingEntry]:
        path = self.dataroot / "dataset_v7w_pointing.json"
        if not path.is_file():
            raise FileNotFoundError(f"Visual7W pointing file not found: {path}")
        data = json.loads(path.read_text())
        boxes = {b["box_id"]: b for b in data["boxes"]}
        entries = []
        for image in data["images"]:
            if image["split"] != self.split:
                continue
            # The GT LMDB holds the image's candidate boxes in sorted box-id order.
            ordered = sorted({b for qa in image["qa_pairs"] for b in [qa["answer"], *qa["multiple_choices"]]})
            position = {b: k for k, b in enumerate(ordered)}
            for qa in image["qa_pairs"]:
                b = boxes[qa["answer"]]
                ref = xywh_to_xyxy([b["x"], b["y"], b["width"], b["height"]])
                mc = sorted([*qa["multiple_choices"], qa["answer"]])
                entries.append(
                    GroundingEntry(
                        str(qa["qa_id"]),
                        f"v7w_{image['image_id']}",
                        qa["question"],
                        ref,
                        int(qa["answer"]),
                        [position[m] for m in mc],
                        clean_id=int(image["image_id"]),
                    )
                )
        return entries

    def _read_guesswhat(self) -> list[GroundingEntry]:
        games = read_jsonl(self.dataroot / f"guesswhat.{self.split}.jsonl")
        bbox_list = read_pickle(self.cache_dir / "image_bbox_list.pkl")
        bboxes = read_pickle(self.cache_dir / "bboxes_dict.pkl")
        entries = []
        for game in games:
            image_id = int(game["image"]["id"])
            ordered = sorted(set(bbox_list[image_id]["bboxes"]))
            position = {b: k for k, b in enumerate(ordered)}
            own = sorted(o["id"] for o in game["objects"])
            entries.append(
                GroundingEntry(
                    str(game["id"]),
                    str(image_id),
                    dialog_text(game["qas"]),
                    np.asarray(bboxes[game["object_id"]], np.float32).reshape(4),  # stored as x1,y1,x2,y2
                    int(game["object_id"]),
                    [position[o] for o in own],
                    clean_id=image_id,
                )
            )
        return entries

    # -- shared ---------------------------------------------------------------------------------
    def entry_text(self, entry: GroundingEntry) -> str:
        return entry.text

    def entry_image_ids(self, entry: GroundingEntry) -> list[str]:
        return [entry.image_id]

    def entry_clean_ids(self, entry: GroundingEntry) -> list[int]:
        return [] if entry.clean_id is None else [entry.clean_id]

    def _rows(self, entry: GroundingEntry) -> tuple[RegionRows, int | None]:
        detections = self.features.get(entry.image_id)
        merge = self.is_pointing or self.split == "train"
        if not merge:
            return plain_rows(detections, self.task.max_regions), None
        # Referring expressions merge without a fixed offset; pointing needs the candidates' row.
        offset_rows = self.config.detection_rows if self.is_pointing else None
        gt = self.gt_features.get(entry.image_id)
        return merged_rows(detections, gt, self.task.max_regions, offset_rows)

    def make_example(self, index: int, entry: GroundingEntry) -> Example:
        rows, gt_offset = self._rows(entry)
        iou = iou_plus_one(rows.boxes, entry.ref_box) * rows.mask  # padding rows never count
        thresholded = np.where(iou < self.config.iou_threshold, 0.0, iou).astype(np.float32)
        candidates = None
        if self.is_pointing:
            assert gt_offset is not None
            candidates = np.asarray([gt_offset + m for m in entry.mc_idx], np.int64)
            if candidates.size and candidates.max() >= rows.num_rows:
                raise ValueError(
                    f"{self.task.slug} {entry.example_id}: candidate row {candidates.max()} is beyond the "
                    f"{self.task.max_regions} regions; raise max_regions or lower detection_rows"
                )
            target = thresholded[candidates]
        elif self.split == "train":
            target = thresholded
        else:
            target = iou.astype(np.float32)  # evaluation keeps the raw IoU, as the reference
        feats, locs, boxes, mask = stack_pairs([rows])
        ids, attn = single_pair_text(self.tokens(index))
        return Example(
            task_id=self.task.task_id,
            example_id=entry.example_id,
            image_ids=(entry.image_id,),
            input_ids=ids,
            attention_mask=attn,
            region_features=feats,
            region_locations=locs,
            region_mask=mask,
            region_boxes=boxes,
            target=target,
            label=int(np.argmax(target)) if candidates is not None and target.size else -1,
            iou=iou.astype(np.float32),
            candidates=candidates,
            ref_box=entry.ref_box.astype(np.float32),
            text=entry.text,
        )


def dialog_text(qas: list[dict]) -> str:
    """GuessWhat dialog as one sentence: "start Q answer A stop " per turn (the reference's format)."""
    return "".join(f"start {qa['question']} answer {qa['answer']} stop " for qa in qas)
