"""unet/inference/rle.py against runs computed by hand (Kaggle Carvana: 1-indexed, row-major)."""
import numpy as np
import pytest

from unet.inference import rle


@pytest.mark.parametrize("mask,runs", [
    (np.zeros((2, 3), np.uint8), ""),                                   # empty mask
    (np.ones((2, 3), np.uint8), "1 6"),                                 # full mask: one run
    (np.array([[0, 0, 1], [1, 1, 0]], np.uint8), "3 3"),                # a run across a row end
    (np.array([[0, 0, 0], [0, 0, 1]], np.uint8), "6 1"),                # last pixel alone
    (np.array([[1, 0, 0], [0, 0, 0]], np.uint8), "1 1"),                # first pixel alone
    (np.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 1]], np.uint8),   # several runs
     "1 2 4 1 6 4 12 1"),
])
def test_encode_and_decode_runs_computed_by_hand(mask, runs):
    assert rle.encode(mask) == runs
    assert np.array_equal(rle.decode(runs, *mask.shape), mask)
    assert rle.decode(runs, *mask.shape).dtype == np.uint8


def test_encode_takes_any_nonzero_as_object_and_round_trips_a_large_random_mask():
    assert rle.encode(np.array([[0, 255], [7, 0]])) == "2 2"
    mask = (np.random.default_rng(0).random((1280, 1918)) > 0.7).astype(np.uint8)
    assert np.array_equal(rle.decode(rle.encode(mask), 1280, 1918), mask)


@pytest.mark.parametrize("text", ["1", "0 2", "5 3", "1 2 2 1", "3 0"])
def test_decode_refuses_runs_that_are_not_pairs_inside_the_image_in_order(text):
    with pytest.raises(ValueError):
        rle.decode(text, 2, 3)
