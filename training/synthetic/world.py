"""The synthetic 12-task world, written in the official file formats of the twelve datasets.

Image pools overlap the way the real ones do, so the clean split has something to remove:

* a COCO-like pool (train2014 / val2014 / test2015 ids) shared by VQA, RefCOCO/+/g (train2014
  images, as the real ones), COCO retrieval (test fold from val2014) and GuessWhat;
* a Visual-Genome-like pool shared by VG QA, GQA and Visual7W, part of which *is* COCO images
  under VG ids (the official `image_data.json` maps them, as the real VG does);
* a Flickr-like pool shared by Flickr30k retrieval and SNLI-VE (independent split choices);
* NLVR2's own image pairs.

The tree under `out/` is `datasets/` (the reference layout), `images/` (the renderings),
`detector/` (COCO-style instances with colour/size attributes), `synthetic/scenes.json` and
`synthetic/feature_jobs.json` (which LMDB needs which image under which key, GT boxes included).
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.datasets import layout as L
from training.datasets.answers import build_gqa_cache, build_vg_qa_cache, build_vqa_cache
from training.datasets.retrieval import TEST_FILE, TRAIN_FILE
from training.synthetic import language as lang
from training.synthetic.scene import COLOURS, SHAPES, SIZES, Scene, SceneSampler, save
from vilbert.safe_pickle import load_pickle


@dataclass(frozen=True)
class WorldSize:
    """How much of everything to generate (images per pool, texts per image)."""

    coco_images: int
    coco_test_images: int
    vg_only_images: int
    vg_from_coco: int  # COCO images that also appear in the VG pool under VG ids
    gqa_testdev_images: int
    flickr_images: int
    nlvr2_sets: tuple[int, int, int]  # train, dev, test (each set: 2 image pairs x 2 statements)
    retrieval_test_images: int  # COCO and Flickr test_set0 size (the reference: 1000)
    vqa_per_image: int = 5
    gqa_per_image: int = 5
    vg_per_image: int = 6
    refs_per_image: int = 2
    v7w_per_image: int = 3
    gw_per_image: int = 2
    vqa_min_count: int = 9  # answer-vocabulary threshold (the reference: 9 questions)


WORLD_SIZES: dict[str, WorldSize] = {
    "small": WorldSize(48, 6, 24, 16, 6, 32, (6, 2, 2), 8, vqa_min_count=1),
    "demo": WorldSize(1500, 100, 700, 500, 100, 900, (300, 50, 50), 150),
    "large": WorldSize(12000, 800, 6000, 4000, 800, 7000, (2400, 400, 400), 1000),
}


@dataclass
class FeatureItem:
    key: str  # LMDB key
    image: str  # image file relative to the world root
    gt_boxes: list[list[float]] | None = None  # GT-box LMDBs: x1,y1,x2,y2 boxes, in the stored order
    gt_ids: list[int] | None = None  # object ids of those boxes (for placeholder features)


@dataclass
class FeatureJob:
    """One LMDB to fill: detections of each image, or features at given GT boxes."""

    lmdb: str  # relative to datasets/
    kind: str  # "detections" | "gt_boxes"
    items: dict[str, FeatureItem] = field(default_factory=dict)

    def add(self, item: FeatureItem) -> None:
        self.items.setdefault(item.key, item)

    def to_json(self) -> dict:
        return {
            "lmdb": self.lmdb,
            "kind": self.kind,
            "items": [
                vars(i) | ({} if i.gt_boxes is not None else {"gt_boxes": None}) for i in self.items.values()
            ],
        }


def _dump_pickle(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=4)


def _dump_json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _dump_jsonl(lines: Iterable[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def _split_by_fraction(items: list, fractions: dict[str, float], rng: np.random.Generator) -> dict[str, list]:
    order = [items[i] for i in rng.permutation(len(items))]
    out, start = {}, 0
    names = list(fractions)
    for k, name in enumerate(names):
        end = len(order) if k == len(names) - 1 else start + max(1, round(fractions[name] * len(order)))
        out[name] = order[start:end]
        start = end
    return out


class WorldWriter:
    """Generates the world into `out`; `write()` runs every step in order."""

    def __init__(self, out: Path, size: WorldSize, seed: int = 0, progress: bool = True) -> None:
        self.out = Path(out)
        self.data = self.out / "datasets"
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.sampler = SceneSampler(np.random.default_rng(seed + 1))
        self.progress = progress
        self.scenes: dict[str, Scene] = {}
        self.jobs: dict[str, FeatureJob] = {}
        self.captions: dict[str, list[str]] = {}
        self.loader_config: dict[str, object] = {}

    # -- pools -------------------------------------------------------------------------------------
    def _ids(self, n: int, low: int, high: int, taken: set[int]) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            v = int(self.rng.integers(low, high))
            if v not in taken:
                taken.add(v)
                out.append(v)
        return out

    def _scene(self, key: str, file: str, ids: dict[str, str], **kw) -> Scene:
        scene = self.sampler.sample(key, **kw)
        scene.file, scene.ids = file, ids
        self.scenes[key] = scene
        return scene

    def make_pools(self) -> None:
        s, taken = self.size, set()
        coco_ids = self._ids(s.coco_images, 9, 581930, taken)
        n_train = round(0.65 * s.coco_images)
        self.coco: dict[str, list[Scene]] = {"train2014": [], "val2014": [], "test2015": []}
        for k, cid in enumerate(coco_ids):
            sub = "train2014" if k < n_train else "val2014"
            self.coco[sub].append(
                self._scene(f"coco-{cid}", f"images/coco/{sub}/COCO_{sub}_{cid:012d}.jpg", {"coco": str(cid)})
            )
        for cid in self._ids(s.coco_test_images, 1, 581930, taken):
            self.coco["test2015"].append(
                self._scene(
                    f"coco-{cid}", f"images/coco/test2015/COCO_test2015_{cid:012d}.jpg", {"coco": str(cid)}
                )
            )
        vg_ids = self._ids(s.vg_only_images + s.vg_from_coco, 1, 2417998, set())
        shared = [
            self.coco["train2014"][i]
            for i in self.rng.choice(
                len(self.coco["train2014"]),
                size=min(s.vg_from_coco, len(self.coco["train2014"])),
                replace=False,
            )
        ]
        self.vg: list[Scene] = []
        for scene, vid in zip(shared, vg_ids, strict=False):
            scene.ids["vg"] = str(vid)  # the same picture, known to VG under its own id
            self.vg.append(scene)
        for vid in vg_ids[len(shared) :]:
            self.vg.append(
                self._scene(
                    f"vg-{vid}", f"images/vg/{vid}.jpg", {"vg": str(vid)}, min_objects=3, max_objects=7
                )
            )
        self.gqa_test: list[Scene] = []
        for gid in self._ids(s.gqa_testdev_images, 100000, 999999, set()):
            self.gqa_test.append(self._scene(f"gqa-n{gid}", f"images/gqa/n{gid}.jpg", {"gqa": f"n{gid}"}))
        self.flickr: list[Scene] = []
        for fid in self._ids(s.flickr_images, 1000000, 9999999999, set()):
            self.flickr.append(
                self._scene(f"flickr-{fid}", f"images/flickr30k/{fid}.jpg", {"flickr": str(fid)})
            )
        self.nlvr2: dict[str, list[tuple[int, list[tuple[Scene, Scene]], tuple[list[str], list[str]]]]] = {}
        # NLVR2 sets are drawn later (statements need scene pairs that make them true and false).

    def _job(self, lmdb: str, kind: str = "detections") -> FeatureJob:
        return self.jobs.setdefault(lmdb, FeatureJob(lmdb, kind))

    # -- VQA ---------------------------------------------------------------------------------------
    def write_vqa(self) -> None:
        d = self.data / "VQA"
        det = self._job(L.COCO_LMDB)
        test_det = self._job(L.COCO_TEST_LMDB)
        info = {"description": "synthetic 12-in-1 world (VQA v2 format)", "version": "2.0"}
        for sub, split_name in (("train2014", "train2014"), ("val2014", "val2014"), ("test2015", "test2015")):
            questions, annotations = [], []
            for scene in self.coco[sub]:
                cid = int(scene.ids["coco"])
                (test_det if sub == "test2015" else det).add(FeatureItem(str(cid), scene.file))
                for k, qa in enumerate(lang.vqa_questions(scene, self.rng, self.size.vqa_per_image)):
                    qid = cid * 1000 + k
                    questions.append({"image_id": cid, "question": qa.question, "question_id": qid})
                    answers = lang.annotator_answers(qa, self.rng)
                    annotations.append(
                        {
                            "question_id": qid,
                            "image_id": cid,
                            "question_type": qa.kind,
                            "answer_type": qa.answer_type,
                            "multiple_choice_answer": _majority(answers),
                            "answers": [
                                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                for i, a in enumerate(answers)
                            ],
                        }
                    )
            kind = "test" if sub == "test2015" else "mscoco"
            _dump_json(
                {
                    "info": info,
                    "task_type": "Open-Ended",
                    "data_type": kind,
                    "data_subtype": split_name,
                    "license": {},
                    "questions": questions,
                },
                d / f"v2_OpenEnded_mscoco_{split_name}_questions.json",
            )
            if sub != "test2015":
                _dump_json(
                    {
                        "info": info,
                        "data_type": "mscoco",
                        "data_subtype": split_name,
                        "license": {},
                        "annotations": annotations,
                    },
                    d / f"v2_mscoco_{split_name}_annotations.json",
                )
        build_vqa_cache(d, self.size.vqa_min_count)
        n_val = sum(self.size.vqa_per_image for _ in self.coco["val2014"])
        self.loader_config["minval_size"] = max(1, n_val // 3)

    # -- GQA and VG QA -----------------------------------------------------------------------------
    def write_gqa(self) -> None:
        d = self.data / "gqa"
        det = self._job("gqa/gqa_resnext152_faster_rcnn_genome.lmdb")
        parts = _split_by_fraction(self.vg, {"train": 0.85, "val": 0.15}, self.rng)
        parts["testdev"] = self.gqa_test
        qid = 201_000_000
        for split, scenes in parts.items():
            questions = {}
            for scene in scenes:
                image_id = scene.ids.get("vg") or scene.ids["gqa"]
                det.add(FeatureItem(image_id, scene.file))
                for qa in lang.gqa_questions(scene, self.rng, self.size.gqa_per_image):
                    qid += 1
                    questions[str(qid)] = {
                        "imageId": image_id,
                        "question": qa.question[0].upper() + qa.question[1:],
                        "answer": qa.answer,
                        "fullAnswer": f"The answer is {qa.answer}.",
                        "isBalanced": True,
                        "types": {"semantic": qa.kind, "structural": "query", "detailed": qa.kind},
                        "groups": {"global": None, "local": qa.kind},
                        "semantic": [],
                        "annotations": {},
                        "entailed": [],
                        "equivalent": [str(qid)],
                    }
            _dump_json(questions, d / f"{split}_balanced_questions.json")
        build_gqa_cache(d)

    def write_vg_qa(self) -> None:
        d = self.data / "visual_genome"
        det = self._job("visual_genome/vg_resnext152_faster_rcnn_genome.lmdb")
        images, image_data, qa_id = [], [], 0
        for scene in self.vg:
            vid = int(scene.ids["vg"])
            det.add(FeatureItem(str(vid), scene.file))
            qas = []
            for qa in lang.vg_questions(scene, self.rng, self.size.vg_per_image):
                qa_id += 1
                qas.append(
                    {
                        "qa_id": qa_id,
                        "image_id": vid,
                        "question": qa.question,
                        "answer": qa.answer,
                        "a_objects": [],
                        "q_objects": [],
                    }
                )
            images.append({"id": vid, "qas": qas})
            coco = scene.ids.get("coco")
            image_data.append(
                {
                    "image_id": vid,
                    "coco_id": int(coco) if coco else None,
                    "flickr_id": None,
                    "width": scene.width,
                    "height": scene.height,
                    "url": scene.file,
                }
            )
        _dump_json(images, d / "question_answers.json")
        _dump_json(image_data, d / "image_data.json")
        # VQA and VG QA share the answer vocabulary (read back with the restricted unpickler).
        build_vg_qa_cache(d, load_pickle(self.data / "VQA" / "cache" / "trainval_ans2label.pkl"))
        self.loader_config["vg_val_size"] = max(1, qa_id // 8)

    # -- retrieval ---------------------------------------------------------------------------------
    def _captions(self, scene: Scene) -> list[str]:
        if scene.key not in self.captions:
            self.captions[scene.key] = lang.captions(scene, self.rng, 5)
        return self.captions[scene.key]

    def write_retrieval(self) -> None:
        n_test = self.size.retrieval_test_images
        # COCO (Karpathy style): the test fold comes from val2014; the rest of val2014 joins training.
        val = self.coco["val2014"]
        coco_test = val[:n_test]
        coco_train = self.coco["train2014"] + val[n_test:]
        det = self._job(L.COCO_LMDB)
        d = self.data / "cocoRetreival"
        for name, scenes in ((TRAIN_FILE, coco_train), (TEST_FILE, coco_test)):
            lines = []
            for scene in scenes:
                det.add(FeatureItem(scene.ids["coco"], scene.file))
                lines.append(
                    {
                        "id": int(scene.ids["coco"]),
                        "img_path": Path(scene.file).name,
                        "sentences": self._captions(scene),
                    }
                )
            _dump_jsonl(lines, d / name)
        d = self.data / "flickr30k"
        fdet = self._job(L.FLICKR_LMDB)
        order = [self.flickr[i] for i in self.rng.permutation(len(self.flickr))]
        self.flickr_test = order[:n_test]
        for name, scenes in ((TRAIN_FILE, order[n_test:]), (TEST_FILE, self.flickr_test)):
            lines = []
            for k, scene in enumerate(scenes):
                fdet.add(FeatureItem(scene.ids["flickr"], scene.file))
                lines.append({"id": k, "img_path": Path(scene.file).name, "sentences": self._captions(scene)})
            _dump_jsonl(lines, d / name)
        self.loader_config["retrieval_eval_images"] = n_test
        self.loader_config["retrieval_eval_chunk"] = min(n_test, 100)

    # -- referring expressions ---------------------------------------------------------------------
    def write_refer(self) -> None:
        root = self.data / "refcoco"
        # Like the real ones, RefCOCO(+) and RefCOCOg each use a part of COCO train2014 (overlapping).
        pool = [s for s in self.coco["train2014"] if len(s.objects) >= 2]
        unc_pool = [pool[i] for i in self.rng.permutation(len(pool))[: max(8, int(0.5 * len(pool)))]]
        uniq = _split_by_fraction(
            unc_pool, {"train": 0.8, "val": 0.08, "testA": 0.06, "testB": 0.06}, self.rng
        )
        umd_pool = [pool[i] for i in self.rng.permutation(len(pool))[: max(8, int(0.5 * len(pool)))]]
        umd = _split_by_fraction(umd_pool, {"train": 0.82, "val": 0.08, "test": 0.1}, self.rng)
        categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
        sent_id = 0
        for name, split_by, splits, make in (
            ("refcoco", "unc", uniq, lang.refcoco_expression),
            ("refcoco+", "unc", uniq, lang.refcoco_plus_expression),
            ("refcocog", "umd", umd, lang.refcocog_expression),
        ):
            refs, images, annotations = [], {}, {}
            det = self._job(f"refcoco/{name}_{split_by}/{name}_resnext152_faster_rcnn_genome.lmdb")
            gt = self._job(
                f"refcoco/{name}_{split_by}/{name}_gt_resnext152_faster_rcnn_genome.lmdb", "gt_boxes"
            )
            for split, scenes in splits.items():
                for scene in scenes:
                    cid = int(scene.ids["coco"])
                    targets = [scene.objects[i] for i in self.rng.permutation(len(scene.objects))]
                    made = 0
                    for obj in targets:
                        if made == self.size.refs_per_image:
                            break
                        sentences = []
                        for _ in range(int(self.rng.integers(1, 3))):
                            text = make(scene, obj, self.rng)
                            if text and all(s["raw"] != text for s in sentences):
                                sent_id += 1
                                sent = text.lower()
                                sentences.append(
                                    {"raw": text, "sent": sent, "tokens": sent.split(), "sent_id": sent_id}
                                )
                        if not sentences:
                            continue
                        made += 1
                        refs.append(
                            {
                                "ref_id": len(refs),
                                "ann_id": obj.object_id,
                                "image_id": cid,
                                "split": split,
                                "category_id": SHAPES.index(obj.shape) + 1,
                                "sent_ids": [s["sent_id"] for s in sentences],
                                "sentences": sentences,
                                "file_name": f"COCO_train2014_{cid:012d}_{obj.object_id}.jpg",
                            }
                        )
                    if made:
                        images[cid] = {
                            "id": cid,
                            "file_name": Path(scene.file).name,
                            "height": scene.height,
                            "width": scene.width,
                        }
                        objs = sorted(scene.objects, key=lambda o: o.object_id)
                        for o in objs:
                            annotations[o.object_id] = {
                                "id": o.object_id,
                                "image_id": cid,
                                "bbox": o.xywh,
                                "area": o.area,
                                "category_id": SHAPES.index(o.shape) + 1,
                                "iscrowd": 0,
                                "segmentation": [],
                            }
                        det.add(FeatureItem(str(cid), scene.file))
                        gt.add(
                            FeatureItem(
                                str(cid), scene.file, [list(o.box) for o in objs], [o.object_id for o in objs]
                            )
                        )
            folder = root / name
            _dump_pickle(refs, folder / f"refs({split_by}).p")
            _dump_json(
                {
                    "images": list(images.values()),
                    "annotations": list(annotations.values()),
                    "categories": categories,
                },
                folder / "instances.json",
            )

    # -- Visual7W ----------------------------------------------------------------------------------
    def write_visual7w(self) -> None:
        d = self.data / "visual7w"
        pool = [s for s in self.vg if len(s.objects) >= 4]
        # Real Visual7W images are COCO pictures: put the VG pool's COCO images first.
        pool.sort(key=lambda s: "coco" not in s.ids)
        splits = _split_by_fraction(pool, {"train": 0.6, "val": 0.2, "test": 0.2}, self.rng)
        det = self._job("visual7w/visual7w_resnext152_faster_rcnn_genome.lmdb")
        gt = self._job("visual7w/visual7w_gt_resnext152_faster_rcnn_genome.lmdb", "gt_boxes")
        images, boxes, qa_id = [], {}, 0
        for split, scenes in splits.items():
            for scene in scenes:
                vid = int(scene.ids["vg"])
                qa_pairs = []
                for obj in [scene.objects[i] for i in self.rng.permutation(len(scene.objects))]:
                    if len(qa_pairs) == self.size.v7w_per_image:
                        break
                    question = lang.v7w_question(scene, obj, self.rng)
                    if question is None:
                        continue
                    others = [o for o in scene.objects if o is not obj]
                    distractors = [others[i] for i in self.rng.choice(len(others), size=3, replace=False)]
                    qa_id += 1
                    qa_pairs.append(
                        {
                            "qa_id": qa_id,
                            "question": question,
                            "answer": obj.object_id,
                            "multiple_choices": [o.object_id for o in distractors],
                            "type": "which",
                        }
                    )
                if not qa_pairs:
                    continue
                used = sorted({b for qa in qa_pairs for b in [qa["answer"], *qa["multiple_choices"]]})
                by_id = {o.object_id: o for o in scene.objects}
                for b in used:
                    x, y, w, h = by_id[b].xywh
                    boxes[b] = {"box_id": b, "x": x, "y": y, "width": w, "height": h, "name": by_id[b].shape}
                images.append(
                    {
                        "image_id": vid,
                        "filename": f"v7w_{vid}.jpg",
                        "split": split,
                        "type": "pointing",
                        "qa_pairs": qa_pairs,
                    }
                )
                det.add(FeatureItem(f"v7w_{vid}", scene.file))
                gt.add(FeatureItem(f"v7w_{vid}", scene.file, [list(by_id[b].box) for b in used], used))
        _dump_json({"images": images, "boxes": list(boxes.values())}, d / "dataset_v7w_pointing.json")

    # -- GuessWhat ---------------------------------------------------------------------------------
    def write_guesswhat(self) -> None:
        d = self.data / "guesswhat"
        pool = [s for s in self.coco["train2014"] + self.coco["val2014"] if len(s.objects) >= 3]
        pool = [pool[i] for i in self.rng.permutation(len(pool))[: max(8, int(0.6 * len(pool)))]]
        splits = _split_by_fraction(pool, {"train": 0.8, "valid": 0.1, "test": 0.1}, self.rng)
        det = self._job(L.COCO_LMDB)
        gt = self._job("guesswhat/guesswhat_gt_resnext152_faster_rcnn_genome.lmdb", "gt_boxes")
        bbox_list, bboxes, game_id = {}, {}, 0
        for split, scenes in splits.items():
            games = []
            for scene in scenes:
                cid = int(scene.ids["coco"])
                objs = sorted(scene.objects, key=lambda o: o.object_id)
                made = 0
                for obj in [scene.objects[i] for i in self.rng.permutation(len(scene.objects))]:
                    if made == self.size.gw_per_image:
                        break
                    dialog = lang.guesswhat_dialog(scene, obj, self.rng)
                    if dialog is None:
                        continue
                    made += 1
                    game_id += 1
                    games.append(
                        {
                            "id": game_id,
                            "questioner_id": 0,
                            "timestamp": "2017-01-01 00:00:00",
                            "image": {
                                "id": cid,
                                "file_name": Path(scene.file).name,
                                "width": scene.width,
                                "height": scene.height,
                                "coco_url": scene.file,
                                "flickr_url": "",
                            },
                            "qas": [
                                {"question": q, "answer": a, "id": game_id * 100 + k}
                                for k, (q, a) in enumerate(dialog)
                            ],
                            "objects": [
                                {
                                    "id": o.object_id,
                                    "category": o.shape,
                                    "category_id": SHAPES.index(o.shape) + 1,
                                    "bbox": o.xywh,
                                    "area": o.area,
                                    "segment": [],
                                }
                                for o in objs
                            ],
                            "object_id": obj.object_id,
                            "status": "success",
                        }
                    )
                if made:
                    bbox_list[cid] = {"bboxes": [o.object_id for o in objs]}
                    bboxes.update({o.object_id: list(o.box) for o in objs})
                    det.add(FeatureItem(str(cid), scene.file))
                    gt.add(
                        FeatureItem(
                            str(cid), scene.file, [list(o.box) for o in objs], [o.object_id for o in objs]
                        )
                    )
            _dump_jsonl(games, d / f"guesswhat.{split}.jsonl")
        _dump_pickle(bbox_list, d / "cache" / "image_bbox_list.pkl")
        _dump_pickle(bboxes, d / "cache" / "bboxes_dict.pkl")

    # -- NLVR2 -------------------------------------------------------------------------------------
    def _nlvr2_set(
        self, split: str, set_id: int
    ) -> tuple[list[tuple[Scene, Scene]], list[str], list[list[bool]]]:
        """Two image pairs and two statements, each true on one pair and false on the other."""
        for _ in range(50):
            palette = self.sampler.palette()
            pairs = [
                (self.sampler.sample("_", 1, 5, palette), self.sampler.sample("_", 1, 5, palette))
                for _ in range(2)
            ]
            wanted = [(True, False), (False, True)]
            found: list[tuple[str, list[bool]]] = []
            for _ in range(300):
                text, holds = lang.nlvr2_statement(self.rng, *palette)
                truth = [holds(left, right) for left, right in pairs]
                if tuple(truth) == wanted[len(found)] and all(text != t for t, _ in found):
                    found.append((text, truth))
                    if len(found) == 2:
                        break
            if len(found) == 2:
                for p, (left, right) in enumerate(pairs):
                    for side, scene in enumerate((left, right)):
                        key = f"{split}-{set_id}-{p}-img{side}"
                        scene.key, scene.file, scene.ids = (
                            key,
                            f"images/nlvr2/{split}/{key}.png",
                            {"nlvr2": key},
                        )
                        self.scenes[key] = scene
                return pairs, [t for t, _ in found], [tr for _, tr in found]
        raise RuntimeError("could not draw an NLVR2 set with balanced statements")

    def write_nlvr2(self) -> None:
        d = self.data / "nlvr2"
        det = self._job("nlvr2/nlvr2_resnext152_faster_rcnn_genome.lmdb")
        for split, n_sets in zip(("train", "dev", "test"), self.size.nlvr2_sets, strict=True):
            lines = []
            for set_id in range(n_sets):
                pairs, statements, truths = self._nlvr2_set(split, set_id)
                for p, (left, right) in enumerate(pairs):
                    det.add(FeatureItem(left.key, left.file))
                    det.add(FeatureItem(right.key, right.file))
                    for s_idx, text in enumerate(statements):
                        lines.append(
                            {
                                "identifier": f"{split}-{set_id}-{p}-{s_idx}",
                                "sentence": text,
                                "label": str(truths[s_idx][p]),
                                "left_url": left.file,
                                "right_url": right.file,
                                "writer": "synthetic",
                                "synset": "shape",
                                "query": "shapes",
                                "directory": set_id % 100,
                            }
                        )
            _dump_jsonl(lines, d / f"{split}.json")

    # -- SNLI-VE -----------------------------------------------------------------------------------
    def write_snli_ve(self) -> None:
        d = self.data / "visual_entailment"
        splits = _split_by_fraction(self.flickr, {"train": 0.8, "dev": 0.1, "test": 0.1}, self.rng)
        pair_id = 0
        for split, scenes in splits.items():
            lines = []
            for scene in scenes:
                premise = self._captions(scene)[0]
                for hyp, label in lang.snli_ve_hypotheses(scene, self.rng):
                    pair_id += 1
                    lines.append(
                        {
                            "Flikr30kID": Path(scene.file).name,
                            "sentence1": premise,
                            "sentence2": hyp,
                            "gold_label": label,
                            "annotator_labels": [label],
                            "pairID": f"{pair_id}",
                            "captionID": f"{Path(scene.file).name}#0",
                        }
                    )
            _dump_jsonl(lines, d / f"snli_ve_{split}.jsonl")

    # -- images, detector annotations, manifests ---------------------------------------------------
    def render_images(self) -> None:
        unique = {s.file: s for s in self.scenes.values()}
        for scene in tqdm(unique.values(), desc="render", unit="img", disable=not self.progress, leave=False):
            save(scene, self.out)

    def write_detector_annotations(self) -> None:
        """COCO instances with colour/size attributes over every rendered image (detector training)."""
        unique = sorted({s.file: s for s in self.scenes.values()}.values(), key=lambda s: s.file)
        order = self.rng.permutation(len(unique))
        n_val = max(1, len(unique) // 10)
        val_files = {unique[i].file for i in order[:n_val]}
        categories = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
        out = {"train": {"images": [], "annotations": []}, "val": {"images": [], "annotations": []}}
        ann_id = 0
        for image_id, scene in enumerate(unique, start=1):
            part = out["val" if scene.file in val_files else "train"]
            part["images"].append(
                {"id": image_id, "file_name": scene.file, "width": scene.width, "height": scene.height}
            )
            for o in scene.objects:
                ann_id += 1
                part["annotations"].append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "bbox": [round(v, 2) for v in o.xywh],
                        "area": round(o.area, 2),
                        "iscrowd": 0,
                        "category_id": SHAPES.index(o.shape) + 1,
                        "attributes": {"color": o.colour, "size": o.size},
                    }
                )
        for split, part in out.items():
            _dump_json(
                {
                    **part,
                    "categories": categories,
                    "attribute_names": {"color": list(COLOURS), "size": list(SIZES)},
                },
                self.out / "detector" / f"instances_{split}.json",
            )

    def write_manifests(self) -> None:
        meta = self.out / "synthetic"
        _dump_json([s.to_json() for s in self.scenes.values()], meta / "scenes.json")
        _dump_json([j.to_json() for j in self.jobs.values()], meta / "feature_jobs.json")
        # The world's splits are smaller than the reference's fixed tails; the loaders read these.
        self.loader_config.update({"vqa_num_answers": None, "gqa_num_answers": None, "detection_rows": None})
        _dump_json(self.loader_config, self.out / "loader_config.json")

    def write(self) -> None:
        steps = [
            ("pools", self.make_pools),
            ("VQA", self.write_vqa),
            ("GQA", self.write_gqa),
            ("VG QA", self.write_vg_qa),
            ("retrieval", self.write_retrieval),
            ("RefCOCO", self.write_refer),
            ("Visual7W", self.write_visual7w),
            ("GuessWhat", self.write_guesswhat),
            ("NLVR2", self.write_nlvr2),
            ("SNLI-VE", self.write_snli_ve),
            ("images", self.render_images),
            ("detector", self.write_detector_annotations),
            ("manifests", self.write_manifests),
        ]
        with tqdm(steps, desc="synthetic world", unit="step", disable=not self.progress) as bar:
            for name, step in bar:
                bar.set_postfix_str(name)
                step()


def _majority(answers: list[str]) -> str:
    from training.datasets.answers import normalize_answer

    counts: dict[str, int] = defaultdict(int)
    for a in answers:
        counts[normalize_answer(a)] += 1
    return max(sorted(counts), key=lambda a: counts[a])
