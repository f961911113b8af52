"""Objects, not pixels: the per-object scores on hand-made label images with known matches, the
instance target of touching objects, and the watershed that splits them again."""
from __future__ import annotations

import numpy as np
import pytest

from unet.evaluation.objects import THRESHOLDS, match, summarize
from unet.inference.instances import Watershed, choose
from unet.labels.borders import BACKGROUND, BORDER, INTERIOR, interior_border


def square(labels: np.ndarray, value: int, top: int, left: int, side: int) -> None:
    labels[top:top + side, left:left + side] = value


def disc(shape, centre, radius) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2


def test_matches_by_iou_give_the_dsb_precision_f1_and_count_error_by_hand():
    """Truth: 3 squares of 10x10 (ids 83, 154, 7). Prediction: the first exactly (IoU 1), the
    second shifted by 2 columns (IoU 80/120 = 0.667), the third missed, plus one false object."""
    truth = np.zeros((40, 60), np.int32)
    square(truth, 83, 0, 0, 10)
    square(truth, 154, 0, 20, 10)
    square(truth, 7, 20, 0, 10)
    pred = np.zeros_like(truth)
    square(pred, 1, 0, 0, 10)
    square(pred, 2, 0, 22, 10)
    square(pred, 3, 25, 40, 10)
    found = match(truth, pred)
    assert (found.true_objects, found.predicted_objects) == (3, 3)
    # IoU 1.0 matches at every threshold; 0.667 at 0.5..0.65 (4 thresholds)
    assert found.matches == (2, 2, 2, 2, 1, 1, 1, 1, 1, 1)
    assert found.precision(0.5) == pytest.approx(2 / (2 + 1 + 1))
    assert found.precision(0.75) == pytest.approx(1 / (1 + 2 + 2))
    assert found.f1(0.5) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert found.dsb == pytest.approx((4 * 0.5 + 6 * 0.2) / 10)
    assert found.count_error == 0 and (found.splits, found.merges) == (0, 0)
    assert len(THRESHOLDS) == 10 and THRESHOLDS[0] == 0.5 and THRESHOLDS[-1] == 0.95


def test_a_merge_and_a_split_are_counted_by_majority():
    truth = np.zeros((20, 40), np.int32)
    square(truth, 1, 0, 0, 10)
    square(truth, 2, 0, 10, 10)          # touches object 1
    square(truth, 3, 10, 25, 10)
    pred = np.zeros_like(truth)
    pred[0:10, 0:20] = 5                 # objects 1 and 2 as one: a merge
    pred[10:20, 25:30] = 6               # object 3 in two halves: a split
    pred[10:20, 30:35] = 7
    found = match(truth, pred)
    assert (found.merges, found.splits) == (1, 1)
    assert found.matches[0] == 0          # IoU 0.5 exactly is no match (strictly above)
    assert found.count_error == 0


def test_empty_images_and_the_set_summary():
    empty = np.zeros((8, 8), np.int32)
    one = empty.copy()
    square(one, 9, 2, 2, 4)
    assert match(empty, empty).dsb == 1.0 and match(one, empty).dsb == 0.0
    assert match(empty, one).dsb == 0.0 and match(one, one).dsb == 1.0
    scores = summarize([match(one, one), match(one, empty)])
    assert scores["map"] == 0.5 and scores["ap50"] == 0.5 and scores["f1_50"] == 0.5
    assert scores["count_error"] == 0.5 and scores["true_objects"] == 2
    assert scores["predicted_objects"] == 1


def test_the_target_of_two_touching_squares_has_a_border_between_them():
    labels = np.zeros((8, 12), np.int32)
    labels[1:7, 1:6] = 4
    labels[1:7, 6:11] = 9                 # touches 4 along column 5|6
    target = interior_border(labels)
    assert target[0, 0] == BACKGROUND
    assert target[3, 5] == BORDER and target[3, 6] == BORDER      # where they meet
    assert target[3, 3] == INTERIOR and target[3, 8] == INTERIOR
    assert target[1, 3] == BORDER                                  # the rim on the background
    assert (target[labels == 0] == BACKGROUND).all()
    # an object cut by the image's edge has no border along the edge
    edge = np.zeros((6, 6), np.int32)
    edge[:, :3] = 1
    assert interior_border(edge)[2, 0] == INTERIOR


def probabilities_of(target: np.ndarray, sharp: float = 0.9) -> np.ndarray:
    """A hand-made probability map: each pixel `sharp` on its target class, the rest shared."""
    probs = np.full((*target.shape, 3), (1 - sharp) / 2, np.float32)
    for c in range(3):
        probs[..., c][target == c] = sharp
    return probs


def test_the_watershed_splits_two_touching_discs_that_a_threshold_joins():
    shape = (40, 60)
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (20, 20), 11)] = 1
    labels[disc(shape, (20, 39), 11) & (labels == 0)] = 2        # overlapping: they touch
    probs = probabilities_of(interior_border(labels))
    foreground = probs[..., INTERIOR] + probs[..., BORDER] > 0.5
    from scipy import ndimage
    assert ndimage.label(foreground)[1] == 1                      # a threshold: one blob
    found = Watershed(seed=0.5, mask=0.5, min_area=8).labels(probs)
    assert found.max() == 2 and set(np.unique(found)) == {0, 1, 2}
    assert match(labels, found).matches[THRESHOLDS.index(0.9)] == 2   # both at IoU > 0.9
    assert found[20, 20] == 1 and found[20, 39] == 2              # numbered in reading order


def test_small_seeds_and_objects_are_dropped_and_nothing_gives_an_empty_image():
    target = np.zeros((20, 20), np.uint8)
    target[2:4, 2:4] = INTERIOR                                    # 4 pixels: noise
    target[10:18, 10:18] = BORDER
    target[11:17, 11:17] = INTERIOR
    found = Watershed(min_area=8).labels(probabilities_of(target))
    assert found.max() == 1 and found[3, 3] == 0 and (found[10:18, 10:18] == 1).all()
    assert Watershed().labels(probabilities_of(np.zeros((5, 5), np.uint8))).max() == 0


def test_the_settings_are_chosen_on_validation_images():
    """Probabilities whose interiors are faint (0.6): a seed threshold of 0.7 finds nothing,
    so `choose` must pick a lower one."""
    shape = (30, 30)
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (10, 10), 6)] = 1
    labels[disc(shape, (20, 20), 6)] = 2
    probs = probabilities_of(interior_border(labels), sharp=0.6)

    def dsb(predicted, truths):
        return float(np.mean([match(t, p).dsb for p, t in zip(predicted, truths)]))
    assert Watershed(seed=0.7, mask=0.5, min_area=4).labels(probs).max() == 0
    settings, score = choose([probs], [labels], dsb,
                             {"seed": (0.7, 0.5), "mask": (0.5,), "min_area": (4,)})
    assert settings.seed == 0.5 and score == pytest.approx(
        dsb([settings.labels(probs)], [labels])) and score > 0.7


# ---- reading label masks as targets ------------------------------------------------------------

def test_a_label_tiff_with_field_ids_and_void_becomes_the_target(tmp_path):
    """Two touching boxes with field ids 83 and 154, a void pixel (value 9): interior, border
    where they meet and along the background, VOID where the mask says void."""
    import tifffile

    from unet.labels.borders import load_labels, load_target
    from unet.labels.masks import VOID
    labels = np.zeros((8, 12), np.uint16)
    labels[1:7, 1:6] = 83
    labels[1:7, 6:11] = 154
    labels[0, 0] = 9
    tifffile.imwrite(tmp_path / "m.tif", labels)
    read = load_labels(tmp_path / "m.tif", ignore=9)
    assert read.dtype == np.int32 and read[0, 0] == -1 and read[3, 3] == 83
    target = load_target(tmp_path / "m.tif", ignore=9)
    assert target[0, 0] == VOID and target[3, 3] == INTERIOR and target[3, 8] == INTERIOR
    assert target[3, 5] == BORDER and target[3, 6] == BORDER and target[1, 3] == BORDER
    assert target[7, 11] == BACKGROUND


def test_output_instances_on_a_binary_mask_takes_its_regions_as_objects(tmp_path):
    from PIL import Image

    from unet.labels.borders import load_labels
    mask = np.zeros((10, 20), np.uint8)
    mask[1:5, 1:5] = 255
    mask[6:9, 10:18] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    labels = load_labels(tmp_path / "m.png", labelled=False)
    assert labels.max() == 2 and labels[2, 2] == 1 and labels[7, 12] == 2 and labels[0, 0] == 0


def test_output_is_instances_for_label_masks_and_refused_for_classes():
    from unet.errors import UserError
    from unet.labels.classes import Classes
    from unet.training.fitting import output_of
    binary, parts = Classes.numbered(2), Classes(("background", "body", "wheels"))
    assert output_of("auto", True, binary) == "instances"
    assert output_of("auto", False, binary) == "mask"
    assert output_of("mask", True, binary) == "mask"
    assert output_of("instances", False, binary) == "instances"
    with pytest.raises(UserError, match="parameter output=instances: the masks hold 3 classes"):
        output_of("instances", False, parts)


def test_validation_scores_an_instance_model_on_its_foreground():
    """decide(instances=True): the object probability (1 - background) above the threshold
    against truth interior-or-border, void kept."""
    import torch

    from unet.labels.masks import VOID
    from unet.training.engine import decide
    # (1, 3, 1, 4) logits: background wins, interior wins, border wins, background wins
    logits = torch.tensor([[[[5.0, 0, 0, 5]], [[0, 5, 0, 0]], [[0, 0, 5, 0]]]])
    truth = torch.tensor([[[0, 2, 1, VOID]]])
    pred, target = decide(logits, truth, instances=True)
    assert pred.tolist() == [[[False, True, True, False]]]
    assert target.tolist() == [[[0, 1, 1, VOID]]]


# ---- baselines ---------------------------------------------------------------------------------

def two_touching_discs(shape=(40, 60)) -> tuple[np.ndarray, np.ndarray]:
    """(labels, (H, W, 3) uint8 image): two bright discs that touch, on a dark field."""
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (20, 20), 11)] = 1
    labels[disc(shape, (20, 40), 11) & (labels == 0)] = 2
    image = np.where(labels > 0, 200, 30).astype(np.uint8)
    return labels, np.repeat(image[..., None], 3, axis=2)


def test_otsu_watershed_splits_touching_discs_that_components_join():
    from unet.evaluation.baselines import components, otsu_threshold, otsu_watershed
    labels, image = two_touching_discs()
    assert 30 <= otsu_threshold(image[..., 0]) < 200
    joined = components((labels > 0).astype(np.uint8))
    assert joined.max() == 1
    split = otsu_watershed(image)
    assert split.max() == 2
    assert match(labels, split).matches[THRESHOLDS.index(0.8)] == 2
    assert otsu_watershed(np.zeros((10, 10, 3), np.uint8)).max() == 0


# ---- outputs -----------------------------------------------------------------------------------

def test_object_rows_give_area_centroid_box_probability_and_the_dsb_rle_by_hand():
    from unet.inference.instances import dsb_rle, object_rows
    labels = np.zeros((3, 4), np.int32)
    labels[0:3, 1] = 1              # column 1, rows 0-2: pixels 4, 5, 6 (column-major, from 1)
    labels[0, 2] = 1                # column 2, row 0: pixel 7
    labels[2, 3] = 2                # column 3, row 2: pixel 12
    probability = np.zeros((3, 4), np.float32)
    probability[labels == 1] = 0.5
    probability[0, 2] = 0.9
    probability[2, 3] = 0.8
    assert dsb_rle(labels, 1) == "4 4" and dsb_rle(labels, 2) == "12 1"
    first, second = object_rows("a.png", labels, probability)
    assert first == ("a.png", 1, 4, 0.75, 1.25, 0, 1, 3, 3, pytest.approx(0.6), "4 4")
    assert second == ("a.png", 2, 1, 2.0, 3.0, 2, 3, 3, 4, pytest.approx(0.8), "12 1")
    assert object_rows("b.png", np.zeros((2, 2), np.int32), np.zeros((2, 2))) == []


class DrawnSegmenter:
    """A Segmenter whose network is replaced by the picture itself: channel 0 of the image is
    the interior probability x 255, channel 1 the border's (so tiles see exactly the map)."""

    @staticmethod
    def make(image_size=(32, 32)):
        import torch

        from unet.inference.segmenter import Segmenter
        from unet.network.model import UNet

        class Drawn(Segmenter):
            def probabilities_resized(self, batch):
                interior = batch[..., 0].astype(np.float32) / 255
                border = batch[..., 1].astype(np.float32) / 255
                return np.stack([1 - interior - border, interior, border], axis=-1)
        torch.manual_seed(0)
        return Drawn(UNet(out_channels=3, features=(4, 8)), image_size, scale=(1.0, 1.0),
                     predict_scale="native", classes=("background", "interior", "border"),
                     watershed=Watershed(seed=0.5, mask=0.5, min_area=8))


def test_objects_across_tile_seams_come_back_whole_and_once():
    """A 200 x 200 image predicted by 64 x 64 tiles (stride 32): discs placed across the seams
    come back as one label each, pixel for pixel the hand-made objects."""
    shape = (200, 200)
    labels = np.zeros(shape, np.int32)
    centres = [(32, 32), (64, 100), (96, 96 + 23), (150, 64), (160, 160)]
    for value, centre in enumerate(centres, start=1):
        labels[disc(shape, centre, 12) & (labels == 0)] = value
    target = interior_border(labels)
    image = np.zeros((*shape, 3), np.uint8)
    image[..., 0] = np.where(target == INTERIOR, 230, 0)
    image[..., 1] = np.where(target == BORDER, 230, 0)
    segmenter = DrawnSegmenter.make()
    assert segmenter.tiled(segmenter.input_size(*shape))
    mask, found, probability = next(segmenter.objects([image]))
    assert found.max() == len(centres)
    assert match(labels, found).matches[THRESHOLDS.index(0.9)] == len(centres)
    assert (mask == (labels > 0)).all()
    assert probability.shape == shape and probability[32, 32] == pytest.approx(230 / 255)


def test_a_labels_sink_writes_label_images_and_rows_and_a_resume_writes_no_row_twice(tmp_path):
    import csv

    from PIL import Image

    from unet.inference.instances import OBJECT_COLUMNS
    from unet.inference.streaming import OBJECTS, PngSink, predict_stream
    labels, image = two_touching_discs()
    drawn = np.zeros_like(image)
    target = interior_border(labels)
    drawn[..., 0] = np.where(target == INTERIOR, 230, 0)
    drawn[..., 1] = np.where(target == BORDER, 230, 0)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray(drawn).save(folder / f"{name}.png")
    out = tmp_path / "out"
    sink = PngSink(out, objects=True)
    segmenter = DrawnSegmenter.make((40, 60))
    outcome = predict_stream(segmenter, sorted(folder.iterdir()), sink, batch_size=1)
    assert outcome.predicted == 2
    written = np.asarray(Image.open(out / "a_labels.png"))
    assert written.dtype == np.uint16 and written.max() == 2
    rows = list(csv.reader(open(out / OBJECTS)))
    assert rows[0] == list(OBJECT_COLUMNS)
    assert [(r[0], r[1]) for r in rows[1:]] == [("a.png", "1"), ("a.png", "2"),
                                                ("b.png", "1"), ("b.png", "2")]
    assert int(rows[1][2]) == int((written == 1).sum())
    # A run killed after b's rows but before its mask: the rerun drops them, then writes once.
    (out / "b_mask.png").unlink()
    with open(out / OBJECTS, "a") as f:
        f.write("b.png,3,1,0,0,0,0,1,1,0.5,1 1\nb.png,4,1,0")       # and a torn line
    again = predict_stream(segmenter, sorted(folder.iterdir()), PngSink(out, objects=True))
    assert (again.predicted, again.skipped) == (1, 1)
    rows = list(csv.reader(open(out / OBJECTS)))
    assert [(r[0], r[1]) for r in rows[1:]] == [("a.png", "1"), ("a.png", "2"),
                                                ("b.png", "1"), ("b.png", "2")]


# ---- end to end: train, evaluate, predict and serve objects ------------------------------------

@pytest.mark.slow
def test_label_masks_train_a_model_of_objects_that_predict_and_serving_give_as_labels(
        tracking_uri, tmp_path):
    """A generated folder of touching nuclei (label TIFFs), only the layout given: `main`
    trains for instances (output auto), evaluate logs the object scores beside both baselines
    and the model card says them; predict writes 16-bit label images and objects.csv whose
    rows agree with them; the real `mlflow models serve` returns the same label image as the
    model in this process."""
    import base64
    import csv
    import io
    import json
    import urllib.request

    import mlflow
    from conftest import TINY, mlflow_run, model_server, only
    from PIL import Image

    from tools import datasets
    from unet.images.reading import read_image
    from unet.tracking import models
    folder = datasets.touching_folder(tmp_path / "touching", images=16, size=(96, 96))
    params = {"data_dir": str(folder), **datasets.TOUCHING_LAYOUT, **only(TINY, "train"),
              "epochs": "3", "model_name": "nuclei", "label_quality": "false"}
    result = mlflow_run("main", params, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri)
    finished = {r.data.tags.get("mlflow.project.entryPoint"): r for r in client.search_runs(["0"])
                if r.info.status == "FINISHED"}
    train, evaluate = finished["train"], finished["evaluate"]
    assert train.data.params.get("effective.output", train.data.params.get("output")) == \
        "instances"
    assert "seed" in train.data.tags["watershed"] and 0 <= train.data.metrics["val_map"] <= 1
    metrics = evaluate.data.metrics
    for key in ("test_map", "test_ap50", "test_f1_50", "test_map_components", "test_map_otsu"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["test_true_objects"] > 0
    version = client.get_model_version("nuclei", evaluate.data.tags["model_version"])
    assert "**Objects**: mAP@0.5:0.95" in version.description
    assert "Otsu + distance watershed" in version.description
    info = mlflow.models.get_model_info(f"models:/nuclei/{version.version}")
    assert info.metadata["output"] == "instances" and info.metadata["classes"] == \
        ["background", "foreground"]

    # predict: masks, 16-bit label images and the objects' rows
    out = tmp_path / "predicted"
    done = mlflow_run("predict", {"model_uri": f"models:/nuclei/{version.version}",
                                  "input_dir": str(folder / "images"),
                                  "output_dir": str(out)}, tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    images = sorted((folder / "images").iterdir())
    assert all((out / f"{p.stem}_labels.png").exists() for p in images)
    rows = list(csv.DictReader(open(out / "objects.csv")))
    total = 0
    for path in images:
        labels = np.asarray(Image.open(out / f"{path.stem}_labels.png"))
        assert labels.dtype == np.uint16 and labels.shape == (96, 96)
        mine = [r for r in rows if r["image"] == path.name]
        assert [int(r["label"]) for r in mine] == list(range(1, int(labels.max()) + 1))
        assert [int(r["area"]) for r in mine] == [int((labels == int(r["label"])).sum())
                                                   for r in mine]
        total += int(labels.max())
    assert len(rows) == total

    # serving: the same label image as this process's model
    segmenter = models.load_segmenter(f"models:/nuclei/{version.version}")
    image = read_image(images[0], None, segmenter.window)      # as the server reads it
    _, expected, _ = next(segmenter.objects([image]))
    png = (folder / "images" / images[0].name).read_bytes()
    # the test's own store (tracking_uri), which the server reads the registry from
    with model_server(tmp_path, lambda: f"models:/nuclei/{version.version}") as (url, _, _):
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(png).decode()]]}}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            (row,) = json.loads(response.read())["predictions"]
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["labels"]))))
    assert served.dtype == np.uint16 and np.array_equal(served, expected)
    assert row["objects"] == int(expected.max())
