import numpy as np
from PIL import Image

from unet.data.check import validate_folder
from unet.data.pairs import load_mask
from unet.data.synthetic import VIEWS_PER_CAR, generate
from unet.images.reading import load_image


def test_same_seed_same_bytes_and_carvana_layout(tmp_path):
    a = generate(tmp_path / "a", 6, 40, 60, seed=3)
    b = generate(tmp_path / "b", 6, 40, 60, seed=3)
    c = generate(tmp_path / "c", 6, 40, 60, seed=4)
    assert a == b and a != c
    assert len(a) == 6 and len({s.rsplit("_", 1)[0] for s in a}) == -(-6 // VIEWS_PER_CAR)
    for stem in a:
        assert (tmp_path / "a/train" / f"{stem}.jpg").read_bytes() == \
            (tmp_path / "b/train" / f"{stem}.jpg").read_bytes()
    car, view = a[0].rsplit("_", 1)
    assert len(car) == 12 and int(car, 16) >= 0 and view == "01"
    mask = Image.open(tmp_path / "a/train_masks" / f"{a[0]}_mask.gif")
    assert mask.mode == "P" and mask.size == (60, 40)
    assert set(np.unique(np.asarray(mask))) == {0, 1}
    assert len(validate_folder(tmp_path / "a/train", tmp_path / "a/train_masks").pairs) == 6


def test_cars_cover_a_plausible_share_of_the_image(tmp_path):
    stems = generate(tmp_path, 8, 80, 120, seed=0)
    shares = [load_mask(tmp_path / "train_masks" / f"{s}_mask.gif").mean() for s in stems]
    assert all(0.08 < share < 0.6 for share in shares), shares


def test_no_colour_threshold_separates_cars(tmp_path):
    """The best single threshold on any channel (either polarity), chosen with the answers,
    must stay far from the Dice a U-Net reaches."""
    stems = generate(tmp_path, 32, 64, 96, seed=1)
    images = np.stack([load_image(tmp_path / "train" / f"{s}.jpg") for s in stems]).astype(np.int16)
    truth = np.stack([load_mask(tmp_path / "train_masks" / f"{s}_mask.gif") for s in stems]) > 0
    channels = [images[..., c] for c in range(3)] + [images.mean(-1)]
    best = 0.0
    for channel in channels:
        for t in range(8, 256, 8):
            for pred in (channel > t, channel <= t):
                tp = (pred & truth).sum()
                best = max(best, 2 * tp / (pred.sum() + truth.sum()))
    assert best < 0.6, best
