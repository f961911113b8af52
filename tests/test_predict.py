"""The predict entry point through the real `mlflow run . -e predict`."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from conftest import mlflow_run, register_untrained_champion
from unet.errors import UserError
from unet.folder import plan


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_predict_writes_a_mask_per_image_and_lists_unreadable_files(tracking_uri, tmp_path):
    register_untrained_champion()
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"car1.jpg": (48, 72), "car2.png": (33, 51), "car3.JPEG": (64, 40)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "notes.txt").write_text("not an image: ignored")
    before = digests(photos)

    out = tmp_path / "masks"
    result = mlflow_run("predict", {"input_dir": str(photos), "output_dir": str(out),
                                    "overlay": "true"}, tracking_uri)
    assert result.returncode != 0
    assert "broken.jpg" in result.stderr and "1 of 4 image(s) could not be read" in result.stderr
    for name, (h, w) in sizes.items():
        stem = name.rsplit(".", 1)[0]
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(out / f"{stem}_overlay.jpg").size == (w, h)
    assert sorted(p.name for p in out.iterdir() if p.name.endswith("_mask.png")) == \
        ["car1_mask.png", "car2_mask.png", "car3_mask.png"]
    assert digests(photos) == before                    # inputs untouched

    # all readable and no overlay: exit 0, masks only
    (photos / "broken.jpg").unlink()
    clean = tmp_path / "clean"
    result = mlflow_run("predict", {"input_dir": str(photos), "output_dir": str(clean)},
                        tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 mask(s) written" in result.stdout
    assert sorted(p.name for p in clean.iterdir()) == \
        ["car1_mask.png", "car2_mask.png", "car3_mask.png"]


def test_predict_refuses_to_write_into_its_input_folder(tracking_uri, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photos / "a.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(photos / "a_mask.png")
    before = digests(photos)
    result = mlflow_run("predict", {"input_dir": str(photos), "output_dir": str(photos)},
                        tracking_uri)
    assert result.returncode != 0
    assert "error: parameter output_dir=" in result.stderr and "is input_dir" in result.stderr
    assert digests(photos) == before


def test_two_images_with_one_stem_are_refused_before_any_write(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "a.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / name)
    with pytest.raises(UserError, match="a.jpg and a.png would both write a_mask.png"):
        plan(photos, tmp_path / "out", overlay=False)
    assert not (tmp_path / "out").exists()
