"""Real-data and look-alike folders of tools.datasets: a labelled field cut into tiles that
keep the field's label ids (the DSB-2018 field's layout, here on a generated field: no
download), its 8-bit PNG copy, generated labelled tiles and a time-lapse."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from tools import datasets
from tools.datasets import (
    field_folders,
    fluorescence_field,
    labelled_tiles_folder,
    timelapse_folder,
)
from unet.data.pairs import GroupRule, Pair

TILE = 64


@pytest.fixture(scope="module")
def field():
    """A 512 x 512 labelled field like DSB's: uint16 image, uint16 labels with ids of the
    field's own (40 + 1..N, not 1..N per tile), its top-left quarter without nuclei so that
    some tiles are surely empty."""
    image, labels = fluorescence_field(3, 0, 0, 512, 512, datasets.LABELLED_TILE_DENSITY)
    labels = np.where(labels > 0, labels + 40, 0).astype(np.uint16)
    labels[:256, :256] = 0
    return image, labels


@pytest.fixture(scope="module")
def folders(field, tmp_path_factory):
    return field_folders(tmp_path_factory.mktemp("dsb"), *field, tile=TILE)


def tiles_of(folder, ext: str = ".tif") -> dict[tuple[int, int], str]:
    """(row, col) -> stem of the tiles in folder/images."""
    found = {}
    for path in sorted((folder / "images").glob(f"*{ext}")):
        row, col = re.fullmatch(r"dsb-r(\d+)c(\d+)", path.stem).groups()
        found[int(row), int(col)] = path.stem
    return found


def label_counts(folder) -> list[int]:
    """How many distinct labels each tile mask of folder holds."""
    return [len(np.unique(m[m > 0])) for m in
            (tifffile.imread(p) for p in sorted((folder / "masks").glob("*_mask.tif")))]


def test_the_whole_field_is_kept_as_it_is_in_16_bit(field, folders):
    image = tifffile.imread(folders["field"] / "images" / "dsb.tif")
    labels = tifffile.imread(folders["field"] / "masks" / "dsb_mask.tif")
    assert image.dtype == labels.dtype == np.uint16
    assert np.array_equal(image, field[0]) and np.array_equal(labels, field[1])


def test_a_512_field_is_cut_into_8x8_tiles_of_64_each_its_own_group(folders):
    tiles = tiles_of(folders["tiles"])
    assert sorted(tiles) == [(r, c) for r in range(8) for c in range(8)]
    for stem in tiles.values():
        assert (folders["tiles"] / "masks" / f"{stem}_mask.tif").is_file()
        assert Pair(stem, None, None).group == stem           # no "_": one tile, one group


def test_each_tile_holds_the_fields_values_and_label_ids_uncut_by_renumbering(field, folders):
    image, labels = field
    for (row, col), stem in tiles_of(folders["tiles"]).items():
        window = np.s_[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE]
        tile = tifffile.imread(folders["tiles"] / "images" / f"{stem}.tif")
        mask = tifffile.imread(folders["tiles"] / "masks" / f"{stem}_mask.tif")
        assert tile.dtype == mask.dtype == np.uint16 and mask.shape == (TILE, TILE)
        assert np.array_equal(tile, image[window]) and np.array_equal(mask, labels[window])
        assert set(np.unique(mask)) == set(np.unique(labels[window]))     # global ids kept


def test_tiles_are_empty_exactly_where_the_field_is_and_nuclei_are_cut_at_the_edges(folders):
    counts = dict(zip(sorted(tiles_of(folders["tiles"]).values()), label_counts(folders["tiles"])))
    assert all(counts[f"dsb-r{r}c{c}"] == 0 for r in range(4) for c in range(4))
    assert sum(n > 0 for n in counts.values()) > 32
    cut = 0
    for stem in counts:
        mask = tifffile.imread(folders["tiles"] / "masks" / f"{stem}_mask.tif")
        cut += bool(np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).any())
    assert cut > 16


def test_the_png_copy_is_8_bit_with_0_255_masks_exactly_where_labels_are(folders):
    assert sorted(tiles_of(folders["png"], ".png")) == sorted(tiles_of(folders["tiles"]))
    for stem in tiles_of(folders["tiles"]).values():
        labels = tifffile.imread(folders["tiles"] / "masks" / f"{stem}_mask.tif")
        mask = np.asarray(Image.open(folders["png"] / "masks" / f"{stem}_mask.png"))
        image = np.asarray(Image.open(folders["png"] / "images" / f"{stem}.png"))
        assert image.dtype == mask.dtype == np.uint8 and image.shape == (TILE, TILE)
        assert np.array_equal(mask, np.where(labels > 0, 255, 0))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return labelled_tiles_folder(tmp_path_factory.mktemp("labelled"), seed=2026)


def test_labelled_tiles_are_48_tiles_of_3_fields_each_its_own_group(labelled):
    stems = sorted(p.stem for p in (labelled / "images").glob("*.tif"))
    assert stems == sorted(f"f{i}-r{r}c{c}" for i in range(3) for r in range(4) for c in range(4))
    assert all((labelled / "masks" / f"{stem}_mask.tif").is_file() for stem in stems)
    assert len({Pair(stem, None, None).group for stem in stems}) == 48


def test_labelled_tiles_hold_0_to_6_labels_with_empty_and_1_2_3_label_tiles(labelled):
    counts = label_counts(labelled)
    assert max(counts) <= 6
    assert counts.count(0) >= 3
    assert all(counts.count(n) >= 3 for n in (1, 2, 3)), counts


def test_labelled_tiles_keep_their_fields_ids_across_a_cut(labelled):
    masks = {p.name[:-len("_mask.tif")]: tifffile.imread(p)
             for p in (labelled / "masks").glob("*_mask.tif")}
    assert all(m.dtype == np.uint16 for m in masks.values())
    ids = set().union(*(set(np.unique(m)) for m in masks.values())) - {0}
    assert min(ids) >= 7 and len(ids) > 6                 # not 1..N in each tile
    # A nucleus cut by a vertical edge: the same id in the last column of a tile and the
    # first of its right neighbour.
    shared = 0
    for stem, mask in masks.items():
        field, row, col = re.fullmatch(r"(f\d+)-r(\d+)c(\d+)", stem).groups()
        right = masks.get(f"{field}-r{row}c{int(col) + 1}")
        if right is not None:
            shared += bool(set(np.unique(mask[:, -1])) & set(np.unique(right[:, 0])) - {0})
    assert shared >= 3


def test_labelled_tiles_cli_writes_the_png_copy_too(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tools.datasets", "labelled-tiles", str(tmp_path / "t"),
                                      "--images", "1", "--png", str(tmp_path / "png")])
    datasets.main()
    assert len(list((tmp_path / "t" / "images").glob("f0-r*c*.tif"))) == 16
    masks = sorted((tmp_path / "png" / "masks").glob("*_mask.png"))
    assert len(masks) == 16
    assert set().union(*(set(np.unique(np.asarray(Image.open(m)))) for m in masks)) == {0, 255}


def test_a_timelapse_is_hela_t00_to_t19_one_group_under_the_default_rule(tmp_path):
    folder = timelapse_folder(tmp_path / "hela", frames=20, seed=1, size=(64, 80))
    stems = sorted(p.stem for p in (folder / "images").glob("*.tif"))
    assert stems == [f"hela_t{t:02d}" for t in range(20)]
    first = tifffile.imread(folder / "masks" / "hela_t00_mask.tif")
    moved = 0
    for stem in stems:
        image = tifffile.imread(folder / "images" / f"{stem}.tif")
        labels = tifffile.imread(folder / "masks" / f"{stem}_mask.tif")
        assert image.dtype == labels.dtype == np.uint16 and labels.shape == (64, 80)
        assert len(np.unique(labels)) > 2                        # instance labels
        moved += not np.array_equal(labels, first)
        # a slight drift: most of the first frame's foreground is still foreground
        assert ((labels > 0) & (first > 0)).sum() > 0.3 * (first > 0).sum()
    assert moved >= 10
    assert {GroupRule().of(s) for s in stems} == {"hela"}
    assert {GroupRule(r"^hela_t(\d)\d$").of(s) for s in stems} == {"0", "1"}


def test_a_touching_folder_holds_clusters_of_touching_nuclei_read_as_labels(tmp_path):
    """Fields of 4 per slide (the group), label masks; in every field some nuclei touch (the
    foreground has fewer regions than labels), none is a sliver, and the folder reads as
    instance labels."""
    from scipy import ndimage

    from unet.labels.classes import detect
    folder = datasets.touching_folder(tmp_path / "a", images=8, seed=3, size=(96, 96))
    again = datasets.touching_folder(tmp_path / "b", images=8, seed=3, size=(96, 96))
    stems = sorted(p.stem for p in (folder / "images").glob("*.tif"))
    assert stems == [f"c{s:03d}_{f:02d}" for s in range(2) for f in range(1, 5)]
    assert {GroupRule().of(s) for s in stems} == {"c000", "c001"}
    for stem in stems:
        labels = tifffile.imread(folder / "masks" / f"{stem}_mask.tif")
        assert np.array_equal(labels, tifffile.imread(again / "masks" / f"{stem}_mask.tif"))
        assert labels.dtype == np.uint16 and labels.max() >= 3
        assert ndimage.label(labels > 0)[1] < labels.max()              # some touch
        assert np.bincount(labels.ravel())[1:].min() >= 10                # no sliver
    assert detect([folder / "masks" / f"{s}_mask.tif" for s in stems]).instances
