"""The registered champion behind the real `mlflow models serve`, called as a curl user would."""
from __future__ import annotations

import base64
import io
import json
import statistics
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
from bombs import jpeg_with_scans, png_declaring, tiff_zip_bomb
from conftest import model_server, register_untrained_champion
from PIL import Image

from unet.images.reading import read_image
from unet.tracking import models
from unet.tracking.serving import decode_mask


def photo(height: int, width: int) -> np.ndarray:
    """A smooth (H, W, 3) uint8 scene (compresses like a photo, unlike noise)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 17)], axis=2)
    image[height // 3: 2 * height // 3, width // 4: 3 * width // 4] = (200, 30, 40)
    return image.astype(np.uint8)


def encoded(image: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=fmt)
    return out.getvalue()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def request_for(*files: bytes, **params) -> dict:
    """The JSON body of the curl line in docs/predict.md (Serve it over HTTP)."""
    body = {"dataframe_split": {"columns": ["image"],
                                "data": [[base64.b64encode(f).decode()] for f in files]}}
    return {**body, "params": params} if params else body


@pytest.fixture(scope="module")
def served_pid(tmp_path_factory):
    """(url, server pid, model_uri): an untrained champion in a private store, served on a free
    port."""
    with model_server(tmp_path_factory.mktemp("store"), register_untrained_champion) as served:
        yield served


@pytest.fixture(scope="module")
def served(served_pid):
    """(url, model_uri) of the served champion."""
    url, _, model_uri = served_pid
    return url, model_uri


def in_process(model_uri: str, image: np.ndarray, tta: str = "auto") -> tuple[np.ndarray, float]:
    """(mask, threshold) from the model loaded here; the threshold is the median probability,
    so that the mask holds both values even though the model is untrained."""
    segmenter = models.load_segmenter(model_uri).with_tta(tta)
    probs = next(segmenter.probabilities([image]))
    threshold = float(np.median(probs))
    return next(segmenter.masks([image], threshold)), threshold


@pytest.mark.parametrize("height,width,fmt", [(1280, 1918, "JPEG"), (333, 517, "PNG")])
def test_served_mask_has_the_image_size_and_matches_in_process(served, height, width, fmt):
    url, model_uri = served
    data = encoded(photo(height, width), fmt)
    expected, threshold = in_process(model_uri, read_image(data))
    assert 0 < expected.mean() < 1

    status, answer = post(url, request_for(data, threshold=threshold))
    assert status == 200, answer
    (prediction,) = answer["predictions"]
    assert (prediction["height"], prediction["width"]) == (height, width)
    mask = decode_mask(base64.b64decode(prediction["mask"]))
    assert mask.shape == (height, width)
    assert np.array_equal(mask, expected)


def test_test_time_flips_are_a_param_and_match_in_process(served):
    url, model_uri = served
    data = encoded(photo(120, 180), "PNG")
    flipped, threshold = in_process(model_uri, read_image(data), tta="flips")
    plain, _ = in_process(model_uri, read_image(data), tta="none")
    assert not np.array_equal(flipped, plain)       # the untrained model is not symmetric
    status, answer = post(url, request_for(data, threshold=threshold, tta="flips"))
    assert status == 200, answer
    assert np.array_equal(decode_mask(base64.b64decode(answer["predictions"][0]["mask"])), flipped)
    status, answer = post(url, request_for(data, tta="rot90"))
    assert status == 400 and "param tta=rot90: use auto, none, hflip, flips" in answer["message"]


def test_a_batch_with_probabilities_and_the_inputs_format(served):
    url, model_uri = served
    small, large = encoded(photo(40, 60), "PNG"), encoded(photo(90, 70), "JPEG")
    status, answer = post(url, request_for(small, large, return_probabilities=True))
    assert status == 200, answer
    assert [(p["height"], p["width"]) for p in answer["predictions"]] == [(40, 60), (90, 70)]
    probs = read_image(base64.b64decode(answer["predictions"][1]["probabilities"]))[..., 0]
    assert probs.shape == (90, 70)
    # {"inputs": ...}: the other JSON layout MLflow accepts gives the same masks
    status, same = post(url, {"inputs": {"image": [base64.b64encode(small).decode()]}})
    assert status == 200 and same["predictions"][0]["mask"] == answer["predictions"][0]["mask"]
    # from Python, arrays work too
    model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict(pd.DataFrame({"image": [photo(37, 53), small]}))
    assert [decode_mask(m).shape for m in out["mask"]] == [(37, 53), (40, 60)]


@pytest.mark.parametrize("body,status,message", [
    (request_for(b"this is not an image"), 400, "image 0: not an image"),
    ({"dataframe_split": {"columns": ["picture"], "data": [["aGVsbG8="]]}}, 400,
     "missing inputs ['image']"),
    ({"dataframe_split": {"columns": ["image"], "data": [["%%% not base64"]]}}, 400,
     "Failed to convert column image"),
    ({"images": ["aGVsbG8="]}, 400, "exactly one of the input fields"),
    (request_for(b"x", threshold=1.5), 400, "param threshold=1.5: must be in (0, 1)"),
])
def test_a_malformed_request_gets_4xx_and_the_server_keeps_serving(served, body, status, message):
    url, _ = served
    code, answer = post(url, body)
    assert code == status and message in answer["message"], answer
    code, answer = post(url, request_for(encoded(photo(20, 30), "PNG")))
    assert code == 200 and answer["predictions"][0]["width"] == 30


def test_latency_of_one_160x240_image(served):
    """Not a timed assertion: prints the p50 so that it can be reported."""
    url, _ = served
    body = request_for(encoded(photo(160, 240), "JPEG"))
    times, masks = [], set()
    for _ in range(20):
        start = time.perf_counter()
        status, answer = post(url, body)
        times.append(time.perf_counter() - start)
        assert status == 200
        masks.add(answer["predictions"][0]["mask"])
    assert len(masks) == 1                  # the same answer every time
    print(f"\np50 latency, one 160x240 JPEG, tiny model: {1000 * statistics.median(times):.1f} ms")


def test_format_rle_gives_predicts_runs_and_names_a_bad_image_without_failing_the_batch(
        tracking_uri, tmp_path):
    """What predict's Spark engine asks the model for: the rows the local engine writes."""
    from unet.inference import rle
    from unet.inference.streaming import CsvSink, predict_stream
    model_uri = register_untrained_champion()
    files = {"a.jpg": encoded(photo(400, 600), "JPEG"), "b.png": encoded(photo(33, 51), "PNG")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    model = mlflow.pyfunc.load_model(model_uri)
    cells = [files["a.jpg"], b"not an image", files["b.png"]]
    out = model.predict(pd.DataFrame({"image": cells}), params={"format": "rle"})
    assert list(out.columns) == ["rle_mask", "height", "width", "error"]
    assert out["error"].tolist()[0] == "" and "not an image" in out["error"][1]
    assert out[["height", "width"]].values.tolist() == [[400, 600], [0, 0], [33, 51]]
    predict_stream(models.load_segmenter(model_uri), sorted(tmp_path.glob("*.*g")),
                   CsvSink(tmp_path / "s.csv"))
    local = dict(line.split(",") for line in (tmp_path / "s.csv").read_text().splitlines()[1:])
    assert [local["a.jpg"], local["b.png"]] == [out["rle_mask"][0], out["rle_mask"][2]]
    assert 0 < rle.decode(local["a.jpg"], 400, 600).mean() < 1
    default = model.predict(pd.DataFrame({"image": cells[:1]}))          # unchanged default
    assert list(default.columns) == ["mask", "height", "width"]


def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A PNG of a few KB that declares width x height pixels (1 bit each, all zero: zlib
    squeezes 18 MB of rows into ~17 KB); decoded as RGB it would be 432 MB."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), in MB."""
    import psutil
    parent = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]) / 2**20


def test_a_huge_declared_image_gets_a_fast_400_and_the_server_stays_up(served_pid):
    url, pid, _ = served_pid
    bomb = bomb_png()
    assert len(bomb) < 40_000
    status, _ = post(url, request_for(encoded(photo(20, 30), "PNG")))   # warm: the model ran
    assert status == 200
    before = rss_mb(pid)
    for body in (request_for(bomb), {"inputs": {"image": [base64.b64encode(bomb).decode()]}},
                 request_for(bomb, format="rle")):
        start = time.perf_counter()
        status, answer = post(url, body)
        took = time.perf_counter() - start
        if "rle" in json.dumps(body.get("params", {})):         # per-row error, 200
            assert status == 200 and "over the limit of 100 megapixels" in \
                answer["predictions"][0]["error"]
        else:
            assert status == 400 and "12000x12000 pixels is over the limit of 100 megapixels" \
                in answer["message"], answer
            assert "\n" not in answer["message"]
        assert took < 1.0, took
    print(f"\n400 for a {len(bomb) // 1024} KB PNG declaring 12000x12000: {took * 1000:.0f} ms; "
          f"server RSS {before:.0f} -> {rss_mb(pid):.0f} MB")
    assert rss_mb(pid) - before < 100
    # Bombs that a header's size does not show (tests/bombs.py), and a request of many rows
    # each within the limit: 400 from the headers, nothing decoded.
    tall = png_declaring(10000, 10000)
    for name, body, says in [
            (f"{len(tiff_zip_bomb()) // 1024} KB TIFF inflating to 1 GB",
             request_for(tiff_zip_bomb()), "bytes for 256 bytes of pixels"),
            (f"{len(jpeg_with_scans(2000)) // 1024} KB JPEG of 2,000 scans",
             request_for(jpeg_with_scans(2000)), "a JPEG of 2000 scans (at most 64)"),
            (f"64 rows of a {len(tall) // 1024} KB PNG declaring 10000x10000",
             request_for(*[tall] * 64), "64 images of 6400 megapixels in one request; at "
                                        "most 200 (UNET_MAX_REQUEST_MEGAPIXELS")]:
        start = time.perf_counter()
        status, answer = post(url, body)
        took = time.perf_counter() - start
        assert status == 400 and says in answer["message"], answer
        assert "\n" not in answer["message"] and took < 1.0, took
        print(f"400 for a {name}: {took * 1000:.0f} ms; server RSS {rss_mb(pid):.0f} MB")
    assert rss_mb(pid) - before < 100
    gif = io.BytesIO()
    Image.fromarray(photo(20, 30)).save(gif, format="GIF")
    status, answer = post(url, request_for(gif.getvalue()))       # a format not read here
    assert status == 400 and "a GIF file: only JPEG, PNG or TIFF files are read" in \
        answer["message"]
    small = encoded(photo(8, 12), "PNG")
    status, answer = post(url, request_for(*[small] * 65))        # one row over the limit
    assert status == 400 and "65 images in one request; at most 64" in answer["message"]
    status, answer = post(url, request_for(encoded(photo(20, 30), "PNG")))
    assert status == 200 and answer["predictions"][0]["width"] == 30


def test_predict_scale_is_a_param_and_matches_in_process(tracking_uri):
    """A photo model (fit) with a training scale of 1/4: param predict_scale=native predicts at
    that scale instead, in both formats; auto is the model's own."""
    import torch
    from mlflow.exceptions import MlflowException

    from unet.inference import rle
    from unet.inference.segmenter import Segmenter
    from unet.network.model import UNet
    torch.manual_seed(0)
    with mlflow.start_run():
        uri = models.log_model(Segmenter(UNet(features=(4, 8, 16, 32)), (32, 48),
                                         scale=(0.25, 0.25), predict_scale="fit"),
                               np.full((16, 24, 3), 128, np.uint8))
    assert mlflow.models.get_model_info(uri).metadata["predict_scale"] == "fit"
    model = mlflow.pyfunc.load_model(uri)
    image = photo(256, 384)                      # fit: 32x48; native: 64x96
    cells = pd.DataFrame({"image": [encoded(image, "PNG")]})
    fit = models.load_segmenter(uri)
    native = models.load_segmenter(uri, predict_scale="native")
    assert (fit.input_size(256, 384), native.input_size(256, 384)) == ((32, 48), (64, 96))
    threshold = float(np.median(next(native.probabilities([image]))))
    masks = {}
    for mode in ("auto", "fit", "native"):
        out = model.predict(cells, params={"predict_scale": mode, "threshold": threshold})
        masks[mode] = decode_mask(out["mask"][0])
    assert np.array_equal(masks["native"], next(native.masks([image], threshold)))
    assert np.array_equal(masks["auto"], masks["fit"])
    assert np.array_equal(masks["fit"], next(fit.masks([image], threshold)))
    assert not np.array_equal(masks["fit"], masks["native"])
    out = model.predict(cells, params={"predict_scale": "native", "threshold": threshold,
                                       "format": "rle"})
    assert rle.decode(out["rle_mask"][0], 256, 384).tolist() == masks["native"].tolist()
    with pytest.raises(MlflowException, match="param predict_scale=huge: use native or fit"):
        model.predict(cells, params={"predict_scale": "huge"})
