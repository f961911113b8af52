"""The predict entry point through the real `mlflow run . -e predict`."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, mlflow_run, register_untrained_champion
from PIL import Image

from unet.errors import UserError
from unet.inference import rle
from unet.inference.jobs import plan_job
from unet.inference.streaming import CsvSink, predict_stream
from unet.tracking import models


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
    assert "predicted 3, skipped 0 (already done), failed 0" in result.stdout
    assert sorted(p.name for p in clean.iterdir() if not p.name.startswith(".")) == \
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
        plan_job(str(photos), "", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def photos_of(folder, count: int, size=(48, 72), seed: int = 0) -> list:
    """`count` JPEGs of smooth random colour fields (a mask of both values even untrained)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size[::-1], Image.BILINEAR)
        image.save(folder / f"car{i:03d}.jpg", quality=90)
        paths.append(folder / f"car{i:03d}.jpg")
    return paths


def submission(path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "img,rle_mask"
    return [tuple(line.split(",")) for line in lines[1:]]


def test_rle_rows_from_a_list_decode_to_the_png_masks_and_bad_files_are_named(tracking_uri,
                                                                             tmp_path):
    register_untrained_champion()
    paths = photos_of(tmp_path / "photos", 5, size=(300, 450))   # JPEG draft mode at work
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    listing = tmp_path / "list.txt"
    listing.write_text("# the cars\n" + "".join(f"{p}\n" for p in reversed(paths))
                       + "photos/broken.jpg\n\n" + f"{tmp_path / 'gone.jpg'}\n")
    result = mlflow_run("predict", {"input_list": str(listing), "output_dir": str(tmp_path / "rle"),
                                    "format": "rle", "threshold": "0.5"}, tracking_uri)
    assert result.returncode != 0
    assert "broken.jpg: not an image" in result.stderr and "gone.jpg" in result.stderr
    assert "predicted 5, skipped 0 (already done), failed 2" in result.stdout
    rows = submission(tmp_path / "rle" / "submission.csv")
    assert [name for name, _ in rows] == [p.name for p in paths]          # sorted, each once

    result = mlflow_run("predict", {"input_dir": str(tmp_path / "photos"),
                                    "output_dir": str(tmp_path / "png")}, tracking_uri)
    assert "predicted 5, skipped 0 (already done), failed 1" in result.stdout
    for name, runs in rows:
        png = np.asarray(Image.open(tmp_path / "png" / name.replace(".jpg", "_mask.png"))) // 255
        assert png.shape == (300, 450) and 0 < png.mean() < 1
        assert np.array_equal(rle.decode(runs, 300, 450), png)

    # the same command again: everything is done, nothing is written twice
    again = mlflow_run("predict", {"input_list": str(listing), "output_dir": str(tmp_path / "rle"),
                                   "format": "rle"}, tracking_uri)
    assert "predicted 0, skipped 5 (already done), failed 2" in again.stdout
    assert submission(tmp_path / "rle" / "submission.csv") == rows


def predict_process(model_uri: str, photos, out, tracking_uri: str) -> subprocess.Popen:
    """The predict step itself (no `mlflow run` around it, so that SIGKILL hits it)."""
    cmd = [sys.executable, "-m", "steps.predict", "--model_uri", model_uri, "--input_dir",
           str(photos), "--output_dir", str(out), "--format", "rle", "--batch_size", "2"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_kill_9_then_the_same_command_resumes_to_the_uninterrupted_csv(tracking_uri, tmp_path):
    model_uri = register_untrained_champion()
    images = photos_of(tmp_path / "photos", 120, size=(480, 720))
    # the uninterrupted run, in this process: the same code, model and batches as the step's
    predict_stream(models.load_segmenter(model_uri), images,
                   CsvSink(tmp_path / "whole" / "submission.csv"), batch_size=2)
    expected = (tmp_path / "whole" / "submission.csv").read_bytes()
    assert expected.count(b"\n") == 121

    csv = tmp_path / "killed" / "submission.csv"
    victim = predict_process(model_uri, tmp_path / "photos", tmp_path / "killed", tracking_uri)
    deadline = time.monotonic() + 120
    while not (csv.exists() and csv.read_bytes().count(b"\n") > 1):   # the first batch is in
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = csv.read_bytes().count(b"\n") - 1
    assert 0 < done < 120                                      # killed in the middle
    with open(csv, "ab") as f:                                 # and as if mid-write: torn row
        f.write(b"car119.jpg,12 3 4")

    rerun = predict_process(model_uri, tmp_path / "photos", tmp_path / "killed", tracking_uri)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert f"predicted {120 - done}, skipped {done} (already done), failed 0" in out
    assert csv.read_bytes() == expected                        # no duplicate, no torn row


@pytest.mark.parametrize("params,message", [
    (dict(input_dir="photos", input_list="list.txt"), "give exactly one of"),
    (dict(input_dir="", input_list=""), "give exactly one of"),
    (dict(input_dir="photos", fmt="tiff"), "parameter format=tiff"),
    (dict(input_dir="photos", fmt="rle", overlay=True), "overlay=true needs format=png"),
    (dict(input_dir="photos", engine="spark"), "engine=spark writes format=rle only"),
    (dict(input_list="list.txt", fmt="rle"), "have one file name"),
])
def test_a_job_that_cannot_be_written_is_refused_before_any_write(tmp_path, monkeypatch,
                                                                  params, message):
    monkeypatch.chdir(tmp_path)
    for folder in ("photos", "other"):
        photos_of(tmp_path / folder, 1, size=(8, 8))
    Path("list.txt").write_text("photos/car000.jpg\nother/car000.jpg\n")
    params = {"input_dir": "", "input_list": "", **params}
    with pytest.raises(UserError, match=message):
        plan_job(params.pop("input_dir"), params.pop("input_list"), str(tmp_path / "out"),
                 **params)
    assert not (tmp_path / "out").exists()


def test_predict_into_a_folder_made_with_other_settings_refuses(tracking_uri, tmp_path):
    from test_bad_input import error_lines, run_step
    first = register_untrained_champion("first")
    register_untrained_champion("second")
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos_of(photos, 3)

    def predict(**params):
        return run_step("predict", {"input_dir": str(photos), "output_dir": str(out),
                                    "model_uri": first, **params}, tracking_uri)
    made = predict()
    assert made.returncode == 0, made.stderr[-3000:]
    record = json.loads((out / ".predict.json").read_text())
    runtime = models.default_runtime("models:/first/1")     # runtime=auto: the model's own
    assert record == {"model": "models:/first/1", "threshold": "0.5", "tta": "auto",
                      "format": "png", "predict_scale": "auto", "runtime": runtime,
                      "overlay": "false", "engine": "local"}
    masks = digests(out)
    overlays = predict(overlay="true")        # the earlier images would get no overlay
    assert overlays.returncode == 2
    assert "overlay=false; this run has overlay=true" in error_lines(overlays)[0]
    other_runtime = predict(runtime={"torch": "onnx", "onnx": "torch"}[runtime])
    assert other_runtime.returncode == 2 and f"runtime={runtime}" in error_lines(other_runtime)[0]

    other = predict(model_uri="models:/second@champion", threshold="0.9")
    assert other.returncode == 2
    (line,) = error_lines(other)
    assert "model=models:/first/1, threshold=0.5" in line
    assert "model=models:/second/1, threshold=0.9" in line and "start afresh" in line
    register_untrained_champion("first")             # first@champion moves to version 2
    moved = predict()
    assert moved.returncode == 2 and "model=models:/first/2" in error_lines(moved)[0]
    latest = predict(model_uri="models:/first/latest")   # resolved too: version 2 now
    assert latest.returncode == 2 and "model=models:/first/2" in error_lines(latest)[0]
    assert digests(out) == masks                     # nothing written by the refused runs
    fitted = predict(model_uri="models:/first/1", predict_scale="fit")
    assert fitted.returncode == 2
    assert "predict_scale=auto; this run has predict_scale=fit" in error_lines(fitted)[0]
    # The untrained model has no scale (as models logged before scales): it can only fit.
    native = predict(model_uri="models:/first/1", predict_scale="native")
    assert native.returncode == 2 and error_lines(native) == [
        "error: parameter predict_scale=native: models:/first/1 records no training scale "
        "(logged before scales existed); use auto or fit"]
    assert digests(out) == masks                     # nothing written by the refused runs
    again = predict(model_uri="models:/first/1")     # the same model and settings: resumes
    assert again.returncode == 0 and "predicted 0, skipped 3" in again.stdout
    # A record written before predict_scale, runtime, overlay and engine were recorded was made
    # with their defaults: auto (the model's own), false, local.
    (out / ".predict.json").write_text(json.dumps({k: v for k, v in record.items() if k not in
                                                   ("predict_scale", "runtime", "overlay",
                                                    "engine")}))
    older = predict(model_uri="models:/first/1")
    assert older.returncode == 0 and "predicted 0, skipped 3" in older.stdout


def test_predict_refuses_an_image_over_the_pixel_limit_from_its_header(tracking_uri, tmp_path):
    from test_serving import bomb_png

    from unet.inference.streaming import PngSink
    photos = tmp_path / "photos"
    photos_of(photos, 2)
    (photos / "bomb.png").write_bytes(bomb_png())            # 17 KB, 12000 x 12000 declared
    gif = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    gif.save(photos / "other.png", format="GIF")            # a GIF named .png
    segmenter = models.load_segmenter(register_untrained_champion())
    started = time.perf_counter()
    outcome = predict_stream(segmenter, sorted(photos.iterdir()), PngSink(tmp_path / "out"),
                             max_pixels=100_000_000)
    assert time.perf_counter() - started < 30
    failed = {path.name: why for path, why in outcome.failed}
    assert outcome.predicted == 2 and set(failed) == {"bomb.png", "other.png"}
    assert failed["bomb.png"] == "12000x12000 pixels is over the limit of 100 megapixels per image"
    assert failed["other.png"] == "a GIF file: only JPEG, PNG or TIFF files are read (convert it)"
    small = predict_stream(segmenter, sorted(photos.glob("car*")), PngSink(tmp_path / "o2"),
                           max_pixels=48 * 72 - 1)          # the limit is a parameter
    assert small.predicted == 0 and "48x72" not in small.failed[0][1] and \
        "72x48 pixels is over the limit" in small.failed[0][1]
