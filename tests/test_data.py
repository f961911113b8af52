import numpy as np
import pytest
from PIL import Image

from unet.data.check import validate_folder
from unet.data.pairs import Pair, SegmentationDataset, load_mask, split_pairs
from unet.data.synthetic import save_mask_gif
from unet.errors import UserError
from unet.images.transforms import eval_transform


def write_pair(root, stem, size=(24, 16), mask_size=None):
    (root / "train").mkdir(exist_ok=True)
    (root / "train_masks").mkdir(exist_ok=True)
    Image.new("RGB", size, (120, 30, 30)).save(root / "train" / f"{stem}.jpg")
    mask = Image.new("L", mask_size or size, 0)
    mask.paste(1, (2, 2, 10, 8))
    save_mask_gif(mask, root / "train_masks" / f"{stem}_mask.gif")


def test_pairs_follow_the_carvana_naming_and_skip_hidden_and_other_files(tmp_path):
    for stem in ("car1_01", "car1_02", "car2_01"):
        write_pair(tmp_path, stem)
    (tmp_path / "train" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "train" / "notes.txt").write_text("hi")
    pairs = validate_folder(tmp_path / "train", tmp_path / "train_masks").pairs
    assert [p.stem for p in pairs] == ["car1_01", "car1_02", "car2_01"]
    assert pairs[0].mask == tmp_path / "train_masks" / "car1_01_mask.gif"
    assert [p.group for p in pairs] == ["car1", "car1", "car2"]


def test_empty_or_missing_folder_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_masks").mkdir()
    with pytest.raises(UserError, match="no images.*train"):
        validate_folder(tmp_path / "train", tmp_path / "train_masks")
    with pytest.raises(UserError, match="folder not found.*nowhere"):
        validate_folder(tmp_path / "nowhere", tmp_path / "train_masks").pairs


@pytest.mark.parametrize("mode,values", [
    ("P", (0, 1)),          # Carvana palette GIF: indices 0/1, palette black/white
    ("L", (0, 255)),        # grey 0/255
    ("L", (0, 1)),          # 0/1 stored directly
])
def test_masks_binarize_from_every_encoding(tmp_path, mode, values):
    array = np.zeros((4, 6), np.uint8)
    array[1:3, 2:5] = values[1]
    image = Image.fromarray(array, "L")
    path = tmp_path / "m.png"
    if mode == "P":
        save_mask_gif(Image.fromarray((array > 0).astype(np.uint8)), path := tmp_path / "m.gif")
    else:
        image.save(path)
    mask = load_mask(path)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask.sum() == 6 and mask[1:3, 2:5].all()




def test_antialiased_edges_threshold_at_half(tmp_path):
    array = np.array([[0, 40, 127, 128, 200, 255]], np.uint8)
    Image.fromarray(array, "L").save(tmp_path / "aa.png")
    assert load_mask(tmp_path / "aa.png").tolist() == [[0, 0, 0, 1, 1, 1]]


def test_split_keeps_every_car_on_one_side_and_is_deterministic():
    pairs = [Pair(f"car{c:02d}_{v:02d}", None, None) for c in range(20) for v in range(1, 5)]
    split = split_pairs(pairs, val_fraction=0.15, test_fraction=0.15, seed=7)
    cars = {name: {p.group for p in part} for name, part in split.items()}
    assert not (cars["train"] & cars["val"]) and not (cars["train"] & cars["test"]) \
        and not (cars["val"] & cars["test"])
    assert sum(len(p) for p in split.values()) == 80
    assert len(split["test"]) == 12 and len(split["val"]) == 12   # 3 cars of 4 views each
    again = split_pairs(list(reversed(pairs)), 0.15, 0.15, seed=7)
    assert {k: [p.stem for p in v] for k, v in again.items()} == \
        {k: [p.stem for p in v] for k, v in split.items()}
    other = split_pairs(pairs, 0.15, 0.15, seed=8)
    assert [p.stem for p in other["test"]] != [p.stem for p in split["test"]]


def test_split_needs_enough_groups_and_the_refusal_names_the_parameter():
    pairs = [Pair(f"car1_{v:02d}", None, None) for v in range(4)]
    with pytest.raises(UserError, match=r"only 1 group\(s\) \('car1'\) under parameter "
                                        r"group=auto.*-P group=none"):
        split_pairs(pairs, 0.2, 0.2, seed=0)


def test_dataset_items_are_normalized_tensors_at_the_training_size(tmp_path):
    write_pair(tmp_path, "car1_01", size=(48, 32))
    pairs = validate_folder(tmp_path / "train", tmp_path / "train_masks").pairs
    dataset = SegmentationDataset(pairs, (16, 24), eval_transform()).preload()
    image, mask = dataset[0]
    assert image.shape == (3, 16, 24) and mask.shape == (16, 24)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert abs(image[0].mean().item() - 120 / 255) < 0.03   # the red channel, scaled to [0, 1]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum().item() == pytest.approx(8 * 6 / 4, abs=4)   # 8x6 box at half size
