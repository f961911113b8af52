"""unet/inference/streaming.py: the submission file's repair on start, batches in order, bad
images."""
import numpy as np
import pytest
import torch
from PIL import Image

from unet.errors import UserError
from unet.inference import rle
from unet.inference.segmenter import Segmenter
from unet.inference.streaming import HEADER, CsvSink, PngSink, predict_stream
from unet.network.model import UNet


def test_a_torn_last_line_is_cut_and_the_names_before_it_are_done(tmp_path):
    csv = tmp_path / "out" / "submission.csv"
    sink = CsvSink(csv)
    assert sink.done_names() == set() and csv.read_text() == HEADER      # created, header only
    csv.write_text(HEADER + "a.jpg,1 2\nb.jpg,\nc.jpg,5 1")              # c.jpg torn mid-row
    assert sink.done_names() == {"a.jpg", "b.jpg"}
    assert csv.read_text() == HEADER + "a.jpg,1 2\nb.jpg,\n"
    csv.write_text("img,rle")                                           # a torn header
    assert sink.done_names() == set() and csv.read_text() == HEADER


def test_a_file_that_is_not_a_submission_is_not_overwritten(tmp_path):
    csv = tmp_path / "submission.csv"
    csv.write_text("id,label\n1,2\n")
    with pytest.raises(UserError, match="is not a submission"):
        CsvSink(csv).done_names()
    assert csv.read_text() == "id,label\n1,2\n"


def test_rows_follow_the_input_order_across_batches_and_a_bad_image_is_skipped(tmp_path):
    torch.manual_seed(0)
    segmenter = Segmenter(UNet(features=(4, 8, 16, 32)), (32, 48))
    rng = np.random.default_rng(1)
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "3.png").write_bytes(b"\x89PNG broken")
    logged = []
    outcome = predict_stream(segmenter, paths, CsvSink(tmp_path / "s.csv"), batch_size=2,
                             workers=3, log=logged.append)
    assert outcome.line() == "predicted 6, skipped 0 (already done), failed 1"
    assert [p.name for p, _ in outcome.failed] == ["3.png"] and "3.png" in logged[0]
    rows = (tmp_path / "s.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["0.png", "1.png", "2.png", "4.png", "5.png", "6.png"]
    masks = segmenter.masks([np.asarray(Image.open(p)) for p in paths if p.name != "3.png"])
    for row, mask in zip(rows, masks):
        assert rle.decode(row.split(",")[1], *mask.shape).tolist() == mask.tolist()
    png = predict_stream(segmenter, paths, PngSink(tmp_path / "png"), batch_size=4)
    assert png.predicted == 6 and not list((tmp_path / "png").glob(".*"))   # no temp files left
