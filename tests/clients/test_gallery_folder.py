"""Registering a folder of images as a gallery from the SDK and the CLI: batches, progress, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients import Client
from clients.__main__ import main as cli
from clients.sdk import batches, file_image_id, folder_images
from testkit.tiny_gateway import scene_png


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for seed in range(20, 25):
        (root / f"scene_{seed}.png").write_bytes(scene_png(seed))
    for seed in range(25, 27):
        (root / "more" / f"scene_{seed}.PNG").write_bytes(scene_png(seed))
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_images_and_batches(folder: Path):
    paths = folder_images(folder)
    assert len(paths) == 7 and all(p.suffix.lower() == ".png" for p in paths)
    assert [len(b) for b in batches(paths, 3, 10**9)] == [3, 3, 1]
    one_byte_cap = [len(b) for b in batches(paths, 16, 1)]
    assert one_byte_cap == [1] * 7  # a file over the byte budget goes alone


def test_register_folder_resumes_where_it_stopped(live_url: str, folder: Path, capsys):
    paths = folder_images(folder)
    with Client(live_url) as client:
        # An earlier run that stopped after its first batch of two images.
        first = client.add_gallery_images("photos", paths[:2])
        assert first.added == [file_image_id(p) for p in paths[:2]] and first.size == 2
        done = client.register_folder("photos", folder, batch_files=3)
        assert (done.files, done.skipped, done.added, done.size) == (7, 2, 5, 7)
        assert "gallery photos: [" in capsys.readouterr().err  # the progress bar
        assert sorted(client.gallery_image_ids("photos", page=3)) == sorted(file_image_id(p) for p in paths)
        again = client.register_folder("photos", folder, progress=False)
        assert (again.skipped, again.added) == (7, 0)  # nothing is sent twice
        listed = {g["name"]: g["size"] for g in client.galleries()["galleries"]}
        assert listed["photos"] == 7

    # The CLI: the same folder into another gallery, list, delete one image, delete the gallery.
    assert (
        cli(["--url", live_url, "gallery", "cli-photos", "--folder", str(folder), "--batch-files", "4"]) == 0
    )
    assert (
        "gallery cli-photos: 7 images (7 files in the folder: 7 added, 0 already there)"
        in capsys.readouterr().out
    )
    assert cli(["--url", live_url, "galleries"]) == 0
    assert "cli-photos" in capsys.readouterr().out
    victim = file_image_id(paths[0])
    assert cli(["--url", live_url, "gallery", "cli-photos", "--delete", victim]) == 0
    with Client(live_url) as client:
        assert victim not in client.gallery_image_ids("cli-photos")
    assert cli(["--url", live_url, "gallery", "cli-photos", "--delete"]) == 0
    with Client(live_url) as client:
        assert client.gallery_image_ids("cli-photos") == []
    capsys.readouterr()
    assert cli(["--url", live_url, "gallery", "x", "--folder", str(folder / "nope")]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert cli(["--url", live_url, "gallery", "x"]) == 1
    assert "give IMAGE files, --folder DIR or --delete" in capsys.readouterr().err
