import os

import numpy as np
from PIL import Image

from unet.data.cache import ArrayCache
from unet.data.pairs import Pair, SegmentationDataset
from unet.images.transforms import eval_transform


def write_pair(folder, stem="car_01", shade=200, size=(40, 60)):
    image = np.full((*size, 3), shade, np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[10:30, 20:40] = 1
    Image.fromarray(image).save(folder / f"{stem}.png")
    Image.fromarray(mask, "P").save(folder / f"{stem}_mask.gif")
    return Pair(stem, folder / f"{stem}.png", folder / f"{stem}_mask.gif")


def counting(arrays):
    """compute() for get_or_compute that records its calls."""
    calls = []

    def compute():
        calls.append(1)
        return arrays
    return compute, calls


def test_second_read_is_a_hit_with_the_same_arrays(tmp_path):
    pair = write_pair(tmp_path)
    cache = ArrayCache(tmp_path / "cache")
    arrays = (np.arange(24, dtype=np.uint8).reshape(2, 4, 3), np.eye(2, 4, dtype=np.uint8))
    compute, calls = counting(arrays)
    cache.get_or_compute(pair.image, pair.mask, (2, 4), compute)
    image, mask = ArrayCache(tmp_path / "cache").get_or_compute(pair.image, pair.mask, (2, 4), compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(image, arrays[0])
    np.testing.assert_array_equal(mask, arrays[1])


def test_same_bytes_elsewhere_hit_another_size_misses(tmp_path):
    pair = write_pair(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    moved = write_pair(copy)                       # same content, another folder, newer mtime
    cache = ArrayCache(tmp_path / "cache")
    assert cache.key(pair.image, pair.mask, (16, 32)) == cache.key(moved.image, moved.mask, (16, 32))
    assert cache.key(pair.image, pair.mask, (16, 32)) != cache.key(pair.image, pair.mask, (32, 48))


def test_dataset_reads_new_content_after_a_file_changes(tmp_path):
    pair = write_pair(tmp_path, shade=200)
    cache = ArrayCache(tmp_path / "cache")
    first = SegmentationDataset([pair], (16, 24), eval_transform(), cache).preload()
    assert first.resized(0)[0].max() == 200 and (cache.hits, cache.misses) == (0, 1)
    again = SegmentationDataset([pair], (16, 24), eval_transform(), cache).preload()
    assert again.resized(0)[0].max() == 200 and (cache.hits, cache.misses) == (1, 1)

    stat = os.stat(pair.image)
    write_pair(tmp_path, shade=90)                 # same name, size and mtime, new pixels
    os.utime(pair.image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = SegmentationDataset([pair], (16, 24), eval_transform(), cache).preload()
    assert changed.resized(0)[0].max() == 90 and (cache.hits, cache.misses) == (1, 2)

    resized = SegmentationDataset([pair], (32, 48), eval_transform(), cache).preload()
    assert resized.resized(0)[0].shape == (32, 48, 3) and cache.misses == 3


def test_a_crash_mid_write_leaves_no_entry_and_a_broken_entry_is_recomputed(tmp_path, monkeypatch):
    pair = write_pair(tmp_path)
    cache = ArrayCache(tmp_path / "cache")
    arrays = (np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), np.uint8))
    entry = cache.path(cache.key(pair.image, pair.mask, (2, 2)))

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(np, "savez", crash)
        try:
            cache.get_or_compute(pair.image, pair.mask, (2, 2), counting(arrays)[0])
        except KeyboardInterrupt:
            pass
    assert not entry.exists() and list(entry.parent.iterdir()) == []

    entry.write_bytes(b"truncated")                # e.g. written by a disk that filled up
    compute, calls = counting(arrays)
    image, _ = cache.get_or_compute(pair.image, pair.mask, (2, 2), compute)
    assert calls == [1] and image.shape == (2, 2, 3)
    with np.load(entry) as stored:
        np.testing.assert_array_equal(stored["mask"], arrays[1])


def test_truncated_entries_are_rebuilt_and_named(tmp_path):
    """Five entries cut short (a real archive's first half, as a full disk leaves it): the
    dataset loads and the cache names the five it made again."""
    pairs = [write_pair(tmp_path, f"car_{i:02d}", shade=100 + i) for i in range(5)]
    cache = ArrayCache(tmp_path / "cache")
    first = SegmentationDataset(pairs, (20, 30), eval_transform(), cache).preload()
    entries = [cache.path(cache.key(p.image, p.mask, (20, 30))) for p in pairs]
    for entry in entries:
        data = entry.read_bytes()
        entry.write_bytes(data[: len(data) // 2])
    again = ArrayCache(tmp_path / "cache")
    second = SegmentationDataset(pairs, (20, 30), eval_transform(), again).preload()
    assert sorted(again.rebuilt) == sorted(entries) and again.misses == 5
    for i in range(5):
        np.testing.assert_array_equal(second.resized(i)[0], first.resized(i)[0])
    third = ArrayCache(tmp_path / "cache")
    SegmentationDataset(pairs, (20, 30), eval_transform(), third).preload()
    assert third.hits == 5 and third.rebuilt == []
