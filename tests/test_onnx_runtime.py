"""unet/inference/onnx_runtime.py: the exported network equals the torch one, at any image size."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from unet.inference import onnx_runtime
from unet.inference.segmenter import Segmenter
from unet.network.model import UNet
from unet.network.precision import choose_precision

SIZE = (64, 96)              # the network's input (multiples of 2**4)


def randomized(model: UNet) -> UNet:
    """Untrained weights, but BatchNorm statistics away from (0, 1), so that every layer
    matters (an export that dropped one would show)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(torch fp32 Segmenter, its ONNX Segmenter) of one exported 4-level U-Net."""
    torch.manual_seed(0)
    model = randomized(UNet(features=(4, 8, 16, 32)))
    path = tmp_path_factory.mktemp("onnx") / onnx_runtime.ONNX_FILE
    onnx_runtime.export(model, path, SIZE)
    reference = Segmenter(model, SIZE, choose_precision("fp32", "cpu"))
    return reference, onnx_runtime.OnnxSegmenter(reference, path)


def picture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], 2)
    return (0.7 * smooth + 0.3 * rng.integers(0, 256, (height, width, 3))).astype(np.uint8)


@pytest.mark.parametrize("height,width", [(161, 243), (1280, 1918), (37, 1001)])
def test_onnx_probabilities_and_masks_equal_torch_fp32_on_odd_sizes(pair, height, width):
    reference, exported = pair
    image = picture(height, width, seed=height)
    expected = next(reference.probabilities([image]))
    got = next(exported.probabilities([image]))
    assert got.shape == expected.shape == (height, width)
    assert np.abs(got - expected).max() <= 1e-4
    threshold = float(np.median(expected))       # masks of both values, untrained or not
    differ = reference.decide(expected, threshold) != exported.decide(got, threshold)
    assert 0 < reference.decide(expected, threshold).mean() < 1
    # Identical, except where torch itself sits within 1e-4 of the threshold.
    assert np.all(np.abs(expected[differ] - threshold) <= 1e-4)


def test_test_time_flips_and_batches_run_on_the_onnx_session(pair):
    reference, exported = pair
    images = [picture(50, 70, seed=s) for s in range(3)]
    flipped = exported.with_tta("flips")
    assert isinstance(flipped, onnx_runtime.OnnxSegmenter) and flipped.runtime == "onnx"
    assert exported.tta == "none"                    # with_tta made a copy
    for got, expected in zip(flipped.probabilities(images, batch_size=2),
                             reference.with_tta("flips").probabilities(images)):
        assert np.abs(got - expected).max() <= 1e-4


def test_sizes_the_graph_cannot_take_are_padded_with_edges_and_cropped(pair):
    reference, exported = pair
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 50, 70), np.float32))
    logits = exported.logits(x)
    assert logits.shape == (2, 1, 50, 70)
    padded = torch.nn.functional.pad(x, (0, 10, 0, 14), mode="replicate")   # to 64x80
    with torch.no_grad():
        expected = reference.model(padded)[..., :50, :70]
    assert torch.allclose(logits, expected, atol=1e-4)


def test_the_graph_has_dynamic_batch_height_and_width(pair):
    _, segmenter = pair
    (image,) = segmenter.session.get_inputs()
    assert image.name == "image" and image.shape[0] == "batch"
    assert all(isinstance(side, str) for side in image.shape[2:])     # symbolic, not fixed
    out = segmenter.session.run(None, {"image": np.zeros((3, 3, 48, 160), np.float32)})[0]
    assert out.shape == (3, 1, 48, 160)


def test_int8_quantization_stays_close_to_fp32(pair, tmp_path):
    reference, fp32 = pair
    images = [picture(64, 96, seed=s) for s in range(8)]
    int8_file = onnx_runtime.quantize_int8(fp32.path, tmp_path / onnx_runtime.INT8_FILE,
                                           images, SIZE)
    int8 = onnx_runtime.OnnxSegmenter(reference, int8_file, "onnx-int8")
    graph = onnx.load(str(int8_file)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    int8_weights = [w for w in weights.values() if w.dtype == np.int8 and w.ndim == 4]
    assert len(int8_weights) >= 10                                   # the convolutions
    # per channel: a weight's DequantizeLinear has one scale per output channel
    # (axis 0 of a Conv's weight, 1 of a ConvTranspose's)
    pairs = [(weights[n.input[1]], weights[n.input[0]]) for n in graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] in weights
             and weights[n.input[0]].ndim == 4]
    assert len(pairs) == len(int8_weights)
    assert all(scale.size in weight.shape[:2] for scale, weight in pairs)
    assert sum(scale.size > 1 for scale, _ in pairs) >= len(pairs) - 1   # all but the head
    probe = picture(80, 120, seed=99)
    got, expected = next(int8.probabilities([probe])), next(reference.probabilities([probe]))
    assert 0 < np.abs(got - expected).max() < 0.1                 # int8: close, not equal
