"""Masks of K classes: detection, the bad-label error, the 4-part built-in set end to end, and
the class map served by the real `mlflow models serve`."""
from __future__ import annotations

import base64
import io
import os
import sys

import mlflow
import numpy as np
import pytest
import torch
from conftest import TINY, free_port, mlflow_run
from mlflow.tracking import MlflowClient
from PIL import Image
from test_bad_input import error_lines, run_step

from unet.data.check import validate_folder
from unet.data.synthetic import PART_NAMES, generate, render
from unet.images.reading import read_for_model, read_image
from unet.inference.segmenter import Segmenter
from unet.labels.classes import BadLabel, Classes, detect_count, load_class_map
from unet.network.model import UNet
from unet.tracking import models, ui

VOC = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]   # a palette of colours, as PASCAL VOC's


def palette_png(values: np.ndarray, path) -> None:
    image = Image.fromarray(values.astype(np.uint8), "P")
    image.putpalette(VOC + [0, 0, 0] * 252)
    image.save(path)


def three_class_folder(root, count: int = 12) -> list[str]:
    """Images of the built-in generator with 3-class palette PNG masks: 0 background,
    1 the car's body and windows, 2 its wheels."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stems = []
    for n in range(count):
        image, parts = render(1000 + n // 4, n % 4 + 1, 48, 72, classes=4)
        labels = np.asarray(parts).copy()
        labels[labels == 2], labels[labels == 3] = 1, 2
        stem = f"car{n // 4:02d}_{n % 4 + 1:02d}"
        image.save(root / "images" / f"{stem}.jpg")
        palette_png(labels, root / "masks" / f"{stem}.png")
        stems.append(stem)
    return stems


def test_classes_are_detected_from_the_masks(tmp_path):
    masks = tmp_path / "m"
    masks.mkdir()
    values = np.zeros((8, 8), np.uint8)
    values[:4], values[6:, 6:] = 1, 2
    palette_png(values, masks / "voc.png")                          # colours: indices
    Image.fromarray(values).save(masks / "small.png")               # 'L' 0..2: indices
    Image.fromarray((values > 0).astype(np.uint8) * 255).save(masks / "binary.png")
    generate(tmp_path / "cars", 4, 48, 72, seed=1)                  # Carvana GIFs, 0/1
    generate(tmp_path / "parts", 4, 48, 72, seed=1, classes=4)      # part GIFs, 0..3
    assert detect_count([masks / "voc.png"]) == 3
    assert detect_count([masks / "small.png"]) == 3
    assert detect_count([masks / "binary.png"]) == 2
    assert detect_count(sorted((tmp_path / "cars" / "train_masks").iterdir())) == 2
    parts = sorted((tmp_path / "parts" / "train_masks").iterdir())
    assert detect_count(parts) == 4
    # one odd mask does not decide the format of the others
    assert detect_count(parts + [masks / "binary.png"]) == 4
    classes = Classes(PART_NAMES)
    for gif, binary in zip(parts, sorted((tmp_path / "cars" / "train_masks").iterdir())):
        labels = load_class_map(gif, classes)
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        # the parts tile exactly the binary car of the same seed
        assert ((labels > 0) == (np.asarray(Image.open(binary)) > 0)).all()


def test_a_mask_value_outside_the_classes_is_named_in_one_line(tmp_path, tracking_uri):
    stems = three_class_folder(tmp_path)
    labels = np.asarray(Image.open(tmp_path / "masks" / f"{stems[5]}.png")).copy()
    labels[0, 0] = 7
    bad = tmp_path / "masks" / f"{stems[5]}.png"
    palette_png(labels, bad)
    with pytest.raises(BadLabel, match=r"value 7 is not a class \(0\.\.2: background, class_1"):
        load_class_map(bad, Classes.numbered(3))
    report = validate_folder(tmp_path / "images", tmp_path / "masks", "", ".png")
    assert report.classes == Classes.numbered(3)
    assert [(f.path.name, f.kind) for f in report.problems] == [(bad.name, "bad_label")]

    layout = {"data_dir": str(tmp_path), "image_dir": "images", "mask_dir": "masks",
              "mask_suffix": "", "mask_ext": ".png"}
    result = run_step("split_data", layout, tracking_uri)
    assert result.returncode == 2
    [line] = error_lines(result)
    assert f"{bad.parent.name}/{bad.name} (mask value that is not a class)" in line
    # With the bad file skipped and the classes named, the folder trains end to end.
    tiny = {k: v for k, v in TINY.items() if not k.startswith(("num_images", "synthetic"))}
    named = mlflow_run("main", {**layout, **tiny, "on_bad_data": "skip", "model_name": "three",
                                "classes": "background,body,wheels"}, tracking_uri)
    assert named.returncode == 0, named.stdout[-2000:] + named.stderr[-2000:]
    assert "3 classes (background, body, wheels)" in named.stdout
    [evaluate] = MlflowClient().search_runs(["0"], "tags.step = 'evaluate'")
    assert {"test_dice_body", "test_dice_wheels", "test_iou_wheels"} <= set(evaluate.data.metrics)
    assert mlflow.models.get_model_info("models:/three/1").metadata["classes"] == \
        ["background", "body", "wheels"]
    card = MlflowClient().get_model_version("three", "1").description
    metrics = evaluate.data.metrics
    assert (f"(mean of the classes: body {metrics['test_dice_body']:.4f}, wheels "
            f"{metrics['test_dice_wheels']:.4f})") in card


def test_four_parts_end_to_end_with_per_class_metrics(tracking_uri):
    result = mlflow_run("main", {**TINY, "synthetic_classes": "4", "num_images": "32",
                                 "model_name": "parts"}, tracking_uri)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = MlflowClient()
    [evaluate] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.step = 'evaluate'")
    metrics = evaluate.data.metrics
    per_class = [metrics[f"test_dice_{name}"] for name in PART_NAMES[1:]
                 if not np.isnan(metrics[f"test_dice_{name}"])]
    assert per_class and metrics["test_dice"] == pytest.approx(np.mean(per_class))
    assert {"baseline_dice_all_background", "baseline_dice_most_frequent_class"} <= set(metrics)
    folder = mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id,
                                                 artifact_path="predictions")
    rows = open(os.path.join(folder, "confusion_matrix.csv")).read().splitlines()
    assert rows[0].split(",")[1:] == list(PART_NAMES)
    counts = np.array([[int(v) for v in row.split(",")[1:]] for row in rows[1:]])
    test_images = int(client.get_run(evaluate.data.tags["split_run_id"]).data.metrics["test_images"])
    assert counts.shape == (4, 4) and counts.sum() == test_images * 48 * 72
    assert Image.open(os.path.join(folder, "confusion_matrix.png")).size[0] > 200
    info = mlflow.models.get_model_info("models:/parts/1")
    assert info.metadata["classes"] == list(PART_NAMES)


def test_the_served_class_map_equals_local_prediction(tmp_path, tracking_uri):
    torch.manual_seed(3)
    image, _ = render(7, 1, 120, 180, classes=4)
    model = UNet(out_channels=4, features=(4, 8)).eval()
    with torch.no_grad():        # untrained, yet a map of several classes: centred logits
        from unet.images.transforms import resize_image, to_input
        x = torch.from_numpy(to_input(resize_image(np.asarray(image), (32, 48))[None]))
        model.head.weight.normal_(0, 3.0)
        model.head.bias -= model(x).mean((0, 2, 3))
    segmenter = Segmenter(model, (32, 48), classes=PART_NAMES)
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG")
    with mlflow.start_run():
        uri = models.log_model(segmenter, np.asarray(image)[:16, :24])
    local = next(models.load_segmenter(uri).masks([read_image(jpeg.getvalue())]))
    assert len(np.unique(local)) > 1            # an untrained model, but not one class only
    port = free_port()
    server = ui.start_server([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                              "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        ui.wait_until_up(server, f"{url}/ping")
        from test_serving import post, request_for
        status, answer = post(url, request_for(jpeg.getvalue()))
    finally:
        ui.stop_server(server)
    assert status == 200, answer
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        answer["predictions"][0]["mask"]))))
    assert served.shape == (120, 180) and (served == local).all()

    # predict writes the class map (indices, not 0/255) and a coloured overlay; RLE is refused
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    (photos / "car.jpg").write_bytes(jpeg.getvalue())
    done = run_step("predict", {"model_uri": uri, "input_dir": str(photos),
                                "output_dir": str(out), "overlay": "true"}, tracking_uri)
    assert done.returncode == 0, done.stderr[-2000:]
    small, size = read_for_model(jpeg.getvalue(), (32, 48))
    expected = next(models.load_segmenter(uri).masks([small], sizes=[size]))
    written = np.asarray(Image.open(out / "car_mask.png"))
    assert written.shape == (120, 180) and (written == expected).all()
    assert set(np.unique(written)) <= {0, 1, 2, 3} and len(np.unique(written)) > 1
    assert (out / "car_overlay.jpg").is_file()
    refused = run_step("predict", {"model_uri": uri, "input_dir": str(photos), "format": "rle",
                                   "output_dir": str(tmp_path / "csv")}, tracking_uri)
    assert refused.returncode == 2
    assert error_lines(refused) == [
        f"error: parameter format=rle: the Kaggle RLE holds binary masks, and {uri} segments 4 "
        f"classes; use format=png (class-index PNGs)"]
