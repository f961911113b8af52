"""tools/onnx_bench.py: the table's ratios and the folder split (the measurements themselves
take minutes: docs/onnx.md)."""
from pathlib import Path

from tools import onnx_bench


def row(model, runtime, interleaved, dice, separate=1.0):
    return {"model": model, "runtime": runtime, "latency_ms": 100.0, "images_per_s": separate,
            "interleaved_images_per_s": interleaved, "dice": dice, "peak_rss_mb": 500.0}


def test_ratios_are_to_torch_fp32_of_the_same_model_from_the_interleaved_turns():
    text = onnx_bench.table([row("cpu", "torch-fp32", 4.0, 0.95),
                             row("cpu", "onnx-int8", 10.0, 0.947),
                             row("seed", "torch-fp32", 1.0, 0.9),
                             row("seed", "onnx-fp32", 1.5, 0.9)])
    lines = text.splitlines()
    assert "| cpu | onnx-int8 | 100 | 1.0 | 10.0 | 2.50 | 500 | 0.9470 | -0.0030 |" in lines
    assert "| seed | onnx-fp32 | 100 | 1.0 | 1.5 | 1.50 | 500 | 0.9000 | +0.0000 |" in lines


def test_the_split_keeps_each_car_on_one_side(tmp_path: Path):
    (tmp_path / "train").mkdir()
    for car in range(6):
        for view in range(1, 5):
            (tmp_path / "train" / f"{car:012x}_{view:02d}.jpg").write_bytes(b"")
    train, test = onnx_bench.split_folder(tmp_path)
    assert len(train) == 16 and len(test) == 8
    assert not {p.stem[:12] for p in train} & {p.stem[:12] for p in test}
    assert all(p.mask.name == f"{p.stem}_mask.gif" for p in train + test)
