"""`training.prepare` on a user's RefCOCO, NLVR2 and SNLI-VE files in their official formats.

Each dataset is written here in its release format (the refer pickle + instances JSON, NLVR2's and
SNLI-VE's JSON lines) over a few rendered PNGs named as the releases name their images, not the
synthetic world's files; features come from the tiny detector the gateway tests serve
(testkit/tiny_gateway.py).  The task's own loader must then read the training split and the
held-out split, with no image (or NLVR2 pair) in both.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from regions.detector import build_detector
from regions.store import FeatureStore
from regions.weights import save_detector
from testkit.tiny_gateway import build_tiny_checkpoint, tiny_detector_preset
from training.datasets import build_dataset
from training.datasets.layout import FLICKR_LMDB, get_layout
from training.fit import main as fit_main
from training.prepare.__main__ import main as prepare_main
from vilbert.cli import UserError

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 170, 60)}
SHAPES = ("circle", "square")


def scene(path: Path, image_id: int) -> list[tuple[str, str, list[float]]]:
    """A 96x80 PNG with two or three shapes; returns (colour, shape, [x, y, w, h]) of each."""
    image = Image.new("RGB", (96, 80), (70, 70, 70))
    draw = ImageDraw.Draw(image)
    objects = []
    for k in range(2 + image_id % 2):
        colour, shape = list(COLOURS)[(image_id + k) % 3], SHAPES[(image_id + k) % 2]
        x, y = 4 + 30 * k, 10 + 12 * ((image_id + k) % 3)
        (draw.ellipse if shape == "circle" else draw.rectangle)([x, y, x + 24, y + 24], fill=COLOURS[colour])
        objects.append((colour, shape, [float(x), float(y), 25.0, 25.0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return objects


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    torch.manual_seed(0)
    detector, _ = save_detector(build_detector(tiny_detector_preset()), root / "tiny.safetensors")
    return detector, build_tiny_checkpoint(root / "served")


def run_prepare(tools, task: str, out: Path, *args: str) -> int:
    detector, checkpoint = tools
    common = ["--out", str(out), "--detector", str(detector), "--checkpoint", str(checkpoint), "--quiet"]
    return prepare_main(["--task", task, *args, *common])


def split_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("train: "))


# ---------------------------------------------------------------------------------------------
# RefCOCO: refs(unc).p + instances.json, COCO-named images
# ---------------------------------------------------------------------------------------------

REFER_SPLITS = {1: "train", 2: "train", 3: "train", 4: "train", 5: "train", 6: "train", 7: "val", 8: "testA"}


@pytest.fixture(scope="module")
def refer_files(tmp_path_factory):
    """8 images: 6 train, 1 val, 1 testA (the refs' own splits); one train ref on the val image."""
    root = tmp_path_factory.mktemp("refcoco")
    images, annotations, refs = [], [], []
    sent_id = 0
    for image_id, split in REFER_SPLITS.items():
        name = f"COCO_train2014_{image_id:012d}.png"
        objects = scene(root / "images" / "train2014" / name, image_id)
        images.append({"id": image_id, "file_name": name, "height": 80, "width": 96})
        for k, (colour, shape, bbox) in enumerate(objects):
            ann_id = image_id * 100 + k
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "bbox": bbox,
                    "area": 625.0,
                    "category_id": 1 + (shape == "square"),
                    "iscrowd": 0,
                }
            )
            if k == 2:
                continue  # not every object is referred to
            sentences = []
            for text in (f"the {colour} {shape}", f"{shape} number {k + 1} from the left"):
                sentences.append({"raw": text, "sent": text, "tokens": text.split(), "sent_id": sent_id})
                sent_id += 1
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_id,
                    "image_id": image_id,
                    # A training ref on the val image: prepare must leave it out of training.
                    "split": "train" if (image_id == 7 and k == 1) else split,
                    "category_id": 1 + (shape == "square"),
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "sentences": sentences,
                    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                }
            )
    categories = [
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 2, "name": "square", "supercategory": "shape"},
    ]
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))  # as the release pickles them
    (root / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


def test_refcoco_own_splits_with_gt_box_features(refer_files, tools, tmp_path, capsys):
    data = tmp_path / "own-refcoco"
    args = ["--refs", str(refer_files / "refs(unc).p"), "--instances", str(refer_files / "instances.json")]
    assert run_prepare(tools, "refcoco", data, *args, "--images", str(refer_files / "images")) == 0
    out = capsys.readouterr().out
    # 6 train images x 2 refs x 2 sentences; held out: the val and testA images' refs (the train
    # ref on the val image is left out, not trained on).
    assert (
        split_line(out)
        == "train: 6 images / 24 expressions; held out for evaluation: 2 images / 6 expressions"
    )
    assert out.index("train: 6 images") < out.index("region features:")  # numbers before extraction
    assert "left out: training expressions on held-out images: 2" in out
    assert "8 images found" in out and "(--ids number)" in out
    assert "loader check: refcoco reads train 24 examples, val 2 examples; no image in both" in out
    assert "tasks=[refcoco]" in out

    train = build_dataset("refcoco", data, "train")
    val = build_dataset("refcoco", data, "val")
    test = build_dataset("refcoco", data, "test")  # testA
    assert set(train.image_ids()) == {str(i) for i in range(1, 7)}
    assert set(val.image_ids()) == {"7"} and set(test.image_ids()) == {"8"}
    layout = get_layout("refcoco")
    with FeatureStore(data / "datasets" / layout.gt_features) as gt:
        record = gt.get("3")  # every annotation box of image 3, in annotation-id order
        assert record.boxes.tolist() == [[4, 10, 29, 35], [34, 22, 59, 47], [64, 34, 89, 59]]
    example = train[0]  # detections + GT rows; the referent's own GT row has IoU 1
    assert example.region_features.shape[-1] == 32
    assert example.target.max() == pytest.approx(1.0)
    assert val[0].iou is not None and val[0].ref_box is not None
    manifest = json.loads((data / "prepare.json").read_text())["refcoco"]
    assert manifest["evaluate"] == {"split": "val", "images": 2, "expressions": 2}
    assert sorted(np.load(layout.test_ids_file(data / "datasets")).tolist()) == [7, 8]


def test_refcoco_plus_all_train_draws_held_out_images(refer_files, tools, tmp_path, capsys):
    """Refs that are all in split train: images are drawn; the held-out refs are val and test."""
    refs = pickle.loads((refer_files / "refs(unc).p").read_bytes())
    all_train = tmp_path / "refs(unc).p"
    all_train.write_bytes(pickle.dumps([{**r, "split": "train"} for r in refs], protocol=2))
    data = tmp_path / "own-refcoco-plus"
    args = ["--refs", str(all_train), "--instances", str(refer_files / "instances.json")]
    assert (
        run_prepare(
            tools,
            "refcoco+",
            data,
            *args,
            "--images",
            str(refer_files / "images"),
            "--held-out-images",
            "25%",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        split_line(out)
        == "train: 6 images / 24 expressions; held out for evaluation: 2 images / 8 expressions"
    )
    assert "2 images drawn with seed 0" in out and "tasks=[refcoco_plus]" in out
    train, val, test = (build_dataset("refcoco_plus", data, s) for s in ("train", "val", "test"))
    assert set(train.image_ids()).isdisjoint(val.image_ids())
    assert set(val.image_ids()) == set(test.image_ids())  # the held-out refs again as the test split
    assert len(val) == len(test) == 8
    assert (data / "datasets/refcoco/refcoco+/refs(unc).p").is_file()

    # RefCOCO (its own splits: images 7 and 8 held out) into the same root: the refer datasets share
    # one clean split, the held-out images of both, and neither trains on any of them.
    drawn = set(val.image_ids())
    args = ["--refs", str(refer_files / "refs(unc).p"), "--instances", str(refer_files / "instances.json")]
    assert run_prepare(tools, "refcoco", data, *args, "--images", str(refer_files / "images")) == 0
    err = capsys.readouterr().err
    held = drawn | {"7", "8"}
    ids = np.load(get_layout("refcoco").test_ids_file(data / "datasets"))
    assert {str(i) for i in ids.tolist()} == held
    for task in ("refcoco", "refcoco_plus"):
        assert set(build_dataset(task, data, "train").image_ids()).isdisjoint(held)
    # RefCOCO+ trained on images RefCOCO holds out: a warning counts what its training loses.
    assert ("training expressions of refcoco_plus (prepared into" in err) == bool({"7", "8"} - drawn)
    assert ("training expressions of refcoco are on" in err) == bool(drawn - {"7", "8"})


# ---------------------------------------------------------------------------------------------
# NLVR2: JSON lines, images <pair>-img0.png / -img1.png
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nlvr2_files(tmp_path_factory):
    """6 image pairs in NLVR2's folders, 2 statements each (one True, one False)."""
    root = tmp_path_factory.mktemp("nlvr2")
    lines = []
    for p in range(6):
        pair = f"train-{10 + p // 2}-{p % 2}"
        counts = []
        for side in (0, 1):
            counts.append(
                len(scene(root / "images" / "train" / str(p // 2) / f"{pair}-img{side}.png", p + side))
            )
        truth = counts[0] == counts[1]
        for s, (text, label) in enumerate(
            (
                ("The two images hold as many shapes.", truth),
                ("The images hold different numbers of shapes.", not truth),
            )
        ):
            lines.append(
                {
                    "identifier": f"{pair}-{s}",
                    "sentence": text,
                    "label": str(label),
                    "left_url": f"https://example.org/{pair}-img0.png",
                    "right_url": f"https://example.org/{pair}-img1.png",
                    "writer": "w1",
                    "synset": "shapes",
                    "query": "shapes",
                    "directory": p // 2,
                }
            )
    path = root / "train.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_nlvr2_held_out_pairs_and_a_fit_step(nlvr2_files, tools, tmp_path, capsys):
    data = tmp_path / "own-nlvr2"
    args = ["--train", str(nlvr2_files / "train.json"), "--images", str(nlvr2_files / "images")]
    assert run_prepare(tools, "nlvr2", data, *args, "--held-out-pairs", "2") == 0
    out = capsys.readouterr().out
    assert split_line(out) == "train: 4 pairs / 8 statements; held out for evaluation: 2 pairs / 4 statements"
    assert "12 images found" in out and "(--ids stem)" in out
    assert "2 pairs drawn with seed 0" in out
    train, dev = build_dataset("nlvr2", data, "train"), build_dataset("nlvr2", data, "dev")
    pairs = {
        side: {e.example_id.rsplit("-", 1)[0] for e in ds.entries}
        for side, ds in (("train", train), ("dev", dev))
    }
    assert len(pairs["train"]) == 4 and len(pairs["dev"]) == 2 and pairs["train"].isdisjoint(pairs["dev"])
    assert set(train.image_ids()).isdisjoint(dev.image_ids()) and len(dev.image_ids()) == 4
    example = dev[0]
    assert example.num_pairs == 2 and example.image_ids[0].endswith("-img0")
    assert not (data / "datasets" / "nlvr2" / "cache").exists()  # NLVR2 has no clean split

    run = tmp_path / "run"
    argv = ["--config", str(ROOT / "training/configs/finetune.yaml"), f"model.init_checkpoint={tools[1]}"]
    argv += ["tasks=[nlvr2]", f"data.root={data}", f"out={run}", "schedule.max_steps=1"]
    argv += ["optim.default_batch_size=4", "progress=false", "checkpoint.every_steps=100"]
    assert fit_main(argv) == 0
    err = capsys.readouterr().err
    assert "nlvr2: trains on train (8 examples, 8 images), validates on dev (4 examples, 4 images)" in err
    assert "dev (4 examples, 4 images); 0 images in both" in err
    assert (run / "model").is_dir()


# ---------------------------------------------------------------------------------------------
# SNLI-VE: JSON lines, Flickr30k-numbered images
# ---------------------------------------------------------------------------------------------

FLICKR_TRAIN = [1000092795, 1000268201, 1000344755, 1000366164, 1000523639, 1000919630]
FLICKR_DEV = [10002456, 1001465944]


@pytest.fixture(scope="module")
def snli_ve_files(tmp_path_factory):
    """6 training and 2 dev images, 3 hypotheses each; one training line is on a dev image."""
    root = tmp_path_factory.mktemp("snli_ve")

    def lines(ids: list[int], field: str) -> list[dict]:
        out = []
        for fid in ids:
            objects = scene(root / "flickr30k-images" / f"{fid}.png", fid % 7)
            colour, shape, _ = objects[0]
            for hypothesis, label in (
                (f"There is a {colour} {shape}.", "entailment"),
                ("The shapes are animals.", "contradiction"),
                ("Someone drew the shapes today.", "neutral"),
            ):
                value = f"{fid}.jpg" if field == "Flikr30kID" else str(fid)
                out.append(
                    {
                        field: value,
                        "sentence1": "Shapes on a grey background.",
                        "sentence2": hypothesis,
                        "gold_label": label,
                        "annotator_labels": [label],
                        "pairID": f"{fid}#{label}",
                        "captionID": f"{fid}.jpg#0",
                    }
                )
        return out

    train = lines(FLICKR_TRAIN, "Flickr30K_ID")  # the SNLI-VE release's field
    dev = lines(FLICKR_DEV, "Flikr30kID")  # the 12-in-1 reference's
    train.append({**dev[0], "sentence2": "A training line on a dev image."})
    for name, rows in (("snli_ve_train.jsonl", train), ("snli_ve_dev.jsonl", dev)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_snli_ve_dev_file_is_held_out(snli_ve_files, tools, tmp_path, capsys):
    data = tmp_path / "own-snli-ve"
    args = [
        "--train",
        str(snli_ve_files / "snli_ve_train.jsonl"),
        "--dev",
        str(snli_ve_files / "snli_ve_dev.jsonl"),
    ]
    assert (
        run_prepare(tools, "snli_ve", data, *args, "--images", str(snli_ve_files / "flickr30k-images")) == 0
    )
    out = capsys.readouterr().out
    assert (
        split_line(out) == "train: 6 images / 18 hypotheses; held out for evaluation: 2 images / 6 hypotheses"
    )
    assert "left out: training hypotheses on held-out images: 1" in out
    assert "every hypothesis of --dev" in out
    train, dev = build_dataset("snli_ve", data, "train"), build_dataset("snli_ve", data, "dev")
    assert set(train.image_ids()) == {str(i) for i in FLICKR_TRAIN}
    assert set(dev.image_ids()) == {str(i) for i in FLICKR_DEV}
    assert sorted(e.label for e in dev.entries) == [0, 0, 1, 1, 2, 2]
    with FeatureStore(data / "datasets" / FLICKR_LMDB) as store:
        assert set(store.keys()) == {str(i) for i in FLICKR_TRAIN + FLICKR_DEV}
    layout = get_layout("snli_ve")
    assert sorted(np.load(layout.test_ids_file(data / "datasets")).tolist()) == sorted(FLICKR_DEV)
    assert train[0].region_features.shape[-1] == 32 and train.removed_images == set()
    assert json.loads((data / "loader_config.json").read_text()) == {}  # nothing for SNLI-VE to set


# ---------------------------------------------------------------------------------------------
# Bad input: one `error:` line
# ---------------------------------------------------------------------------------------------


def test_wrong_flags_and_bad_files_are_one_line_errors(nlvr2_files, refer_files, tools, tmp_path, capsys):
    images = ["--images", str(nlvr2_files / "images")]
    for argv, expected in (
        (["--task", "nlvr2", *images], "arguments are required for --task nlvr2: --train"),
        (
            ["--task", "nlvr2", "--train", str(nlvr2_files / "train.json"), "--refs", "x.p", *images],
            "--refs is for --task refcoco, refcoco+, refcocog, not nlvr2",
        ),
        (
            [
                "--task",
                "nlvr2",
                "--train",
                str(nlvr2_files / "train.json"),
                "--held-out-images",
                "2",
                *images,
            ],
            "--held-out-pairs",
        ),
    ):
        with pytest.raises(SystemExit) as exc:
            run_prepare(tools, argv[1], tmp_path / "x", *argv[2:])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and expected in err and len(err.splitlines()) == 1, err

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"identifier": "train-1-0-0", "sentence": "s", "label": "maybe"}) + "\n")
    with pytest.raises(UserError, match=r'label .maybe.; NLVR2.s are "True" / "False"'):
        run_prepare(tools, "nlvr2", tmp_path / "y", "--train", str(bad), *images)
    refs = pickle.loads((refer_files / "refs(unc).p").read_bytes())
    broken = tmp_path / "refs(unc).p"
    broken.write_bytes(pickle.dumps([{**refs[0], "ann_id": 999999}]))
    with pytest.raises(UserError, match="ann_id 999999 is not in --instances"):
        run_prepare(
            tools,
            "refcoco",
            tmp_path / "z",
            "--refs",
            str(broken),
            "--instances",
            str(refer_files / "instances.json"),
            "--images",
            str(refer_files / "images"),
        )
