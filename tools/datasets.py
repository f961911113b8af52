"""Folders for the time-to-quality benchmark, unlike the built-in set the defaults were tuned on.

* `carvana_folder`: Carvana's layout and size (`train/<car>_<view>.jpg` 1918x1280,
  `train_masks/<car>_<view>_mask.gif`), cars from the built-in generator under another seed and
  another look: a dusk grade (hue turned, warm tint, lower contrast, gamma) and stronger noise.
  Options: `views` per car (Carvana has 16), `unseen_paints` (the cars the pipeline's default
  split puts in val and test wear paints that no training car wears: generalization from few
  cars), `parts` (palette PNG masks of background, body, wheels instead of binary GIFs).
* `cells_folder`: another kind of data: microscopy-like fields of many small, partly touching
  cells on an unevenly lit background, PNG images with 0/255 PNG masks
  (`images/<slide>_<field>.png`, `masks/<slide>_<field>_mask.png`), 384x512.
* `fluorescence_folder`: microscopy as it is kept: 16-bit greyscale TIFF fields of bright
  blob nuclei on a dark, unevenly lit background (values about 200..4000 of 65535, with shot
  and read noise), 16-bit TIFF instance-label masks (0 background, 1..N one value per
  nucleus; `--binary-labels`: 0/65535 instead); `png_copy` converts such a folder to 8-bit
  PNG images (one intensity window for the whole folder: its 0.5th..99.5th percentiles) with
  0/255 PNG masks, the hand conversion the pipeline's own reading is measured against.
* `dsb_field` + `field_folders` (`dsb-field`): real data, the DSB-2018 fluorescence nuclei
  field (512x512, 16-bit, values 0..235) with its expert instance labels, as the stardist
  wheel ships it (downloaded by pip; nothing is kept in the repository): `field/` the whole
  field, `tiles/` its 64 tiles of 64x64 (`dsb-r<row>c<col>`: each tile its own group; the
  field's label ids; nuclei cut at the edges; empty tiles), `png/` the tiles' 8-bit copy.
* `labelled_tiles_folder` (`labelled-tiles`): a generated look-alike of those tiles: fields of
  256x256 cut into 64x64 tiles holding 0..6 labels with the field's (arbitrary) ids.
* `timelapse_folder` (`timelapse`): frames of one drifting field, `images/hela_t00.tif` ...
  with instance-label masks: one group under the default group rule, all frames "hela".
* `touching_folder` (`touching`): objects that touch, for instance output: 128x128 16-bit
  fields of nuclei in clusters of 1..4, each nucleus against another along a short edge, with
  label masks (`images/c<slide>_<field>.tif`, four fields a slide).

* `voc_folder`: PASCAL VOC's layout and masks (`JPEGImages/<scene>_<n>.jpg`,
  `SegmentationClass/<scene>_<n>.png`): palette PNGs in VOC's colours, background 0, one or two
  object classes (1, 2), and VOC's void value 255 on a border a few pixels wide around each
  object (where annotators were unsure), 96x128.

* `large_folder`: a few large images (e.g. 4 of 1500x2000) with small blob objects, JPEG images
  and 0/255 PNG masks in the cells layout: what the plan's memory cap is for.
* `tiled_field_folder`: fields of small blobs (512x512) cut into 64x64 tiles for training, the
  whole fields kept in `fields/` for predict (one held out: none of its tiles in the folder).

* `corrupt_masks`: label errors in a Carvana-layout folder, for the label-quality check
  (docs/label-quality.md): a share of the masks shifted by a tenth of the width, swapped with
  another car's, half erased or emptied, in turn; `corrupted.json` in the folder records which.

    python -m tools.datasets carvana OUT --images 64 --seed 2026
    python -m tools.datasets carvana OUT --images 128 --views 16 --unseen-paints --parts
    python -m tools.datasets cells OUT --images 96 --seed 7
    python -m tools.datasets fluorescence OUT --images 24 --size 64x64 --png OUT_PNG
    python -m tools.datasets dsb-field OUT
    python -m tools.datasets labelled-tiles OUT --images 3 --seed 7 --png OUT_PNG
    python -m tools.datasets timelapse OUT --images 20 --size 128x128
    python -m tools.datasets carvana OUT --images 64 --corrupt 0.05
    python -m tools.datasets voc OUT --images 48 --seed 3 --classes 2
    python -m tools.datasets large OUT --images 4 --size 1500x2000 --seed 7
    python -m tools.datasets tiled-field OUT --images 3 --seed 7
"""
from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from unet.config import pipeline as config
from unet.data import synthetic
from unet.data.pairs import Pair, split_pairs

CARVANA_LAYOUT = {}     # the pipeline's defaults: train/, train_masks/, _mask.gif
PARTS_LAYOUT = {"mask_ext": ".png"}
PART_NAMES = ("background", "body", "wheels")
CELLS_LAYOUT = {"image_dir": "images", "mask_dir": "masks", "mask_suffix": "_mask",
                "mask_ext": ".png"}
FLUORESCENCE_LAYOUT = {**CELLS_LAYOUT, "mask_ext": ".tif"}     # its png_copy: CELLS_LAYOUT


def dusk(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> the same scene at dusk: hue turned by 20-40 degrees, contrast 0.8,
    gamma 1.3, a warm tint and sensor noise twice the built-in set's."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(10, 20))) % 180
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) / 255
    out = (0.5 + 0.8 * (out - 0.5)).clip(0, 1) ** 1.3
    out = out * np.array([1.08, 0.97, 0.85], np.float32)
    out = out * 255 + rng.normal(0, 10, out.shape).astype(np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _car(args) -> None:
    out, car_seed, view, height, width, paint, parts = args
    image, mask = synthetic.render(car_seed, view, height, width, 4 if parts else 2, paint)
    graded = dusk(np.asarray(image), np.random.default_rng([car_seed, view, 7]))
    stem = f"{car_seed & 0xFFFFFFFFFFFF:012x}_{view:02d}"
    Image.fromarray(graded).save(out / "train" / f"{stem}.jpg", quality=90)
    if not parts:
        synthetic.save_mask_gif(mask, out / "train_masks" / f"{stem}_mask.gif")
        return
    # background 0, body 1 (windows are part of the body here), wheels 2: a palette PNG.
    indices = np.asarray(mask)
    png = Image.fromarray(np.select([indices == 3, indices > 0], [2, 1], 0).astype(np.uint8), "P")
    png.putpalette(synthetic.MASK_PALETTE[:3] + [200, 40, 40, 255, 200, 0] + [0] * 759)
    png.save(out / "train_masks" / f"{stem}_mask.png")


def held_out_paints(cars: list[int], views: int) -> dict[int, int]:
    """car -> paint index: the cars that split_data's defaults put in val and test get the
    last half of the palette, the training cars the first half (backgrounds still use every
    colour, so a held-out paint is seen in training only as background)."""
    defaults = config.read_params()["split_data"]
    pairs = [Pair(f"{car & 0xFFFFFFFFFFFF:012x}_{view:02d}", Path(), Path())
             for car in cars for view in range(1, views + 1)]
    split = split_pairs(pairs, defaults["val_fraction"], defaults["test_fraction"],
                        defaults["seed"])
    held = {pair.group for name in ("val", "test") for pair in split[name]}
    half = len(synthetic.PALETTE) // 2
    seen, unseen = iter(range(10**6)), iter(range(10**6))
    return {car: (half + next(unseen) % half if f"{car & 0xFFFFFFFFFFFF:012x}" in held
                  else next(seen) % half) for car in cars}


def carvana_folder(out: Path, images: int, seed: int, size=(1280, 1918), workers: int = 2,
                   views: int = 4, unseen_paints: bool = False, parts: bool = False) -> Path:
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train_masks").mkdir(parents=True, exist_ok=True)
    cars = [int(c) for c in np.random.default_rng(seed).integers(0, 2**63 - 1,
                                                                 size=-(-images // views))]
    paints = held_out_paints(cars, views) if unseen_paints else {}
    jobs = [(out, car, view, *size, paints.get(car), parts)
            for car in cars for view in range(1, views + 1)][:images]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_car, jobs, chunksize=4))
    return out


def _field(args) -> None:
    out, seed, slide, field, height, width = args
    rng = np.random.default_rng([seed, slide, field])
    # Uneven illumination: a smooth gradient plus a vignette, dim blue-grey background.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.7 + 0.3 * np.cos((xx / width - rng.uniform(0, 1)) * np.pi) \
        * np.cos((yy / height - rng.uniform(0, 1)) * np.pi)
    canvas = Image.new("RGB", (width, height), tuple(int(c) for c in rng.uniform(20, 60, 3)))
    mask = Image.new("L", (width, height), 0)
    draw, mask_draw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    stain = rng.uniform(120, 255, 3)
    for _ in range(int(rng.integers(25, 70))):
        r = rng.uniform(5, 12)
        a, b = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        colour = tuple(int(c) for c in np.clip(stain * rng.uniform(0.6, 1.1), 0, 255))
        draw.ellipse([x - a, y - b, x + a, y + b], fill=colour)
        mask_draw.ellipse([x - a, y - b, x + a, y + b], fill=255)
        nucleus = tuple(int(c * 0.5) for c in colour)       # a darker nucleus inside
        draw.ellipse([x - a / 3, y - b / 3, x + a / 3, y + b / 3], fill=nucleus)
    for _ in range(int(rng.integers(5, 15))):                # debris: dim specks, not cells
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, 3)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in stain * 0.35))
    img = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.2)), np.float32) * light[..., None]
    img += rng.normal(0, 6, img.shape)
    stem = f"s{slide:03d}_{field:02d}"
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(out / "images" / f"{stem}.png")
    mask.save(out / "masks" / f"{stem}_mask.png")


def cells_folder(out: Path, images: int, seed: int, size=(384, 512), workers: int = 2) -> Path:
    """Four fields per slide (the slide is the group the split keeps together)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, i // 4, i % 4 + 1, *size) for i in range(images)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_field, jobs, chunksize=8))
    return out


def fluorescence_field(seed: int, slide: int, field: int, height: int, width: int,
                       pixels_per_nucleus: tuple[int, int] = (1200, 500)
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One field: ((H, W) uint16 image, (H, W) uint16 labels 0..N), deterministic from
    (seed, slide, field). Nuclei are ellipses of radius 4-10 px with a soft edge, each of its
    own brightness (600..3800 over a background of about 200-320), some touching (a later
    nucleus covers an earlier one), one per 1200..500 pixels of field (`pixels_per_nucleus`:
    sparse, dense end); labels are renumbered 1..N over the nuclei still seen."""
    rng = np.random.default_rng([seed, slide, field, 16])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = 200 + 120 * (0.5 + 0.5 * np.cos((xx / width - rng.uniform()) * np.pi)
                              * np.cos((yy / height - rng.uniform()) * np.pi))
    signal = np.zeros((height, width), np.float32)
    labels = np.zeros((height, width), np.int32)
    area = height * width
    sparse, dense = pixels_per_nucleus
    for label in range(1, int(rng.integers(max(2, area // sparse), max(3, area // dense))) + 1):
        r = rng.uniform(4, 10)
        a, b = r * rng.uniform(0.75, 1.25), r * rng.uniform(0.75, 1.25)
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        _nucleus(rng, xx, yy, (cy, cx, a, b, angle), label, signal, labels)
    return _exposed(rng, background, signal, labels)


def _nucleus(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray,
             shape: tuple[float, float, float, float, float], label: int,
             signal: np.ndarray, labels: np.ndarray) -> None:
    """Draws one nucleus, an ellipse (cy, cx, semi-axes a, b, angle) of its own brightness
    with a soft edge and a chromatin texture, into `signal` (brightest wins) and `labels` (a
    later nucleus covers an earlier one)."""
    cy, cx, a, b, angle = shape
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    d = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    brightness = rng.uniform(600, 3800)
    blob = brightness / (1 + np.exp((d - 1) * 8))           # soft edge, half at d = 1
    blob *= 1 + 0.15 * np.cos(u * 0.9 + rng.uniform(0, 6)) * (d < 1)   # chromatin texture
    np.maximum(signal, blob, out=signal)
    labels[d < 1] = label


def _exposed(rng: np.random.Generator, background: np.ndarray, signal: np.ndarray,
             labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The camera's image of background + signal (Poisson and read noise) as uint16, and the
    labels renumbered 1..N over the nuclei still seen."""
    expected = background + signal
    image = rng.poisson(expected / 4).astype(np.float32) * 4 + rng.normal(0, 25, expected.shape)
    seen = np.unique(labels[labels > 0])
    renumber = np.zeros(int(labels.max()) + 1, np.uint16)
    renumber[seen] = np.arange(1, len(seen) + 1)
    return image.clip(0, 65535).astype(np.uint16), renumber[labels]


TOUCHING_LAYOUT = FLUORESCENCE_LAYOUT


def touching_field(seed: int, slide: int, field: int, height: int = 128, width: int = 128,
                   pixels_per_cluster: int = 2500) -> tuple[np.ndarray, np.ndarray]:
    """A field of nuclei in clusters that touch: ((H, W) uint16 image, (H, W) uint16 labels
    1..N). One cluster per `pixels_per_cluster` pixels, each of 1..4 nuclei (radius 5-9 px,
    drawn as in fluorescence_field); each nucleus after a cluster's first sits against an
    earlier one, its centre 0.8-0.95 of the sum of their radii away, so the two touch along
    a short edge (the later covers the earlier where they overlap) and foreground alone joins
    them; a nucleus is placed no closer than that to any other (10 tries, else left out), so
    none is mostly covered. Deterministic from (seed, slide, field)."""
    rng = np.random.default_rng([seed, slide, field, 31])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = 200 + 120 * (0.5 + 0.5 * np.cos((xx / width - rng.uniform()) * np.pi)
                              * np.cos((yy / height - rng.uniform()) * np.pi))
    signal = np.zeros((height, width), np.float32)
    labels = np.zeros((height, width), np.int32)
    placed: list[tuple[float, float, float]] = []             # (cy, cx, radius)

    def free(cy: float, cx: float, r: float) -> bool:
        """No nucleus placed so far lies closer than 0.8 of the sum of their radii."""
        return all(np.hypot(cy - y, cx - x) >= 0.8 * (r + q) for y, x, q in placed)

    for _ in range(max(1, height * width // pixels_per_cluster)):
        cluster: list[tuple[float, float, float]] = []
        for _ in range(int(rng.integers(1, 5))):
            r = rng.uniform(5, 9)
            for _ in range(10):               # a place against the cluster, clear of the rest
                if cluster:
                    py, px, pr = cluster[int(rng.integers(len(cluster)))]
                    turn, gap = rng.uniform(0, 2 * np.pi), (pr + r) * rng.uniform(0.8, 0.95)
                    cy, cx = py + gap * np.sin(turn), px + gap * np.cos(turn)
                else:
                    cy, cx = rng.uniform(8, height - 8), rng.uniform(8, width - 8)
                if free(cy, cx, r):
                    break
            else:
                continue
            cluster.append((cy, cx, r))
            placed.append((cy, cx, r))
            _nucleus(rng, xx, yy, (cy, cx, r * rng.uniform(0.9, 1.1), r * rng.uniform(0.9, 1.1),
                                   rng.uniform(0, np.pi)), len(placed), signal, labels)
    return _exposed(rng, background, signal, labels)


def touching_folder(out: Path, images: int = 48, seed: int = 2026, size=(128, 128)) -> Path:
    """images/c<cluster slide>_<field>.tif (uint16) and masks/..._mask.tif (uint16 labels
    1..N) of `touching_field`, four fields per slide (the group the split keeps together).
    Layout: TOUCHING_LAYOUT."""
    import tifffile
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image, labels = touching_field(seed, i // 4, i % 4 + 1, *size)
        stem = f"c{i // 4:03d}_{i % 4 + 1:02d}"
        tifffile.imwrite(out / "images" / f"{stem}.tif", image)
        tifffile.imwrite(out / "masks" / f"{stem}_mask.tif", labels)
    return out


def fluorescence_folder(out: Path, images: int, seed: int, size=(64, 64),
                        binary_labels: bool = False) -> Path:
    """images/s<slide>_<field>.tif (uint16 grey) and masks/s<slide>_<field>_mask.tif (uint16
    instance labels 1..N, or 0/65535 with binary_labels), four fields per slide (the group
    the split keeps together). Layout: FLUORESCENCE_LAYOUT."""
    import tifffile
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image, labels = fluorescence_field(seed, i // 4, i % 4 + 1, *size)
        if binary_labels:
            labels = np.where(labels > 0, 65535, 0).astype(np.uint16)
        stem = f"s{i // 4:03d}_{i % 4 + 1:02d}"
        tifffile.imwrite(out / "images" / f"{stem}.tif", image)
        tifffile.imwrite(out / "masks" / f"{stem}_mask.tif", labels)
    return out


def png_copy(folder: Path, out: Path) -> Path:
    """A fluorescence folder as 8-bit PNG images and 0/255 PNG masks (CELLS_LAYOUT), as one
    would convert it by hand: one window for all images, the 0.5th..99.5th percentiles of
    their values, mapped linearly onto 0..255."""
    import tifffile

    from unet.images.intensity import PERCENTILES, to_rgb8
    folder, out = Path(folder), Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    paths = sorted((folder / "images").glob("*.tif"))
    stack = np.stack([tifffile.imread(p) for p in paths])
    window = tuple(float(v) for v in np.percentile(stack, PERCENTILES))
    for path, image in zip(paths, stack):
        Image.fromarray(to_rgb8(image, window)[..., 0]).save(out / "images" / f"{path.stem}.png")
        labels = tifffile.imread(folder / "masks" / f"{path.stem}_mask.tif")
        Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8)).save(
            out / "masks" / f"{path.stem}_mask.png")
    return out


def cut_tiles(folder: Path, prefix: str, image: np.ndarray, labels: np.ndarray,
              tile: int) -> None:
    """Writes the whole `tile` x `tile` tiles of a field, row by row, as
    `images/<prefix>-r<row>c<col>.tif` and `masks/<prefix>-r<row>c<col>_mask.tif`
    (FLUORESCENCE_LAYOUT): the image's values and the field's label numbers as they are, so
    a nucleus cut by a tile edge keeps one id on both sides."""
    import tifffile
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    height, width = labels.shape
    for top in range(0, height - tile + 1, tile):
        for left in range(0, width - tile + 1, tile):
            stem = f"{prefix}-r{top // tile}c{left // tile}"
            window = np.s_[top:top + tile, left:left + tile]
            tifffile.imwrite(folder / "images" / f"{stem}.tif", image[window])
            tifffile.imwrite(folder / "masks" / f"{stem}_mask.tif", labels[window])


DSB_WHEEL = "stardist==0.9.2"      # ships one DSB-2018 field with its labels as test data
DSB_FILES = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")


def dsb_field() -> tuple[np.ndarray, np.ndarray]:
    """The DSB-2018 fluorescence nuclei field ((512, 512) uint16 image, values 0..235) and its
    expert instance labels ((512, 512) uint16, 125 nuclei numbered up to 183), read out of the
    stardist wheel (about 3 MB, downloaded by pip into a temporary folder; stardist itself is
    not installed)."""
    import io
    import subprocess
    import sys
    import tempfile
    import zipfile

    import tifffile
    with tempfile.TemporaryDirectory() as tmp:
        # --only-binary: an sdist would be built, not just unpacked; the wheel is a zip.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--only-binary", ":all:", DSB_WHEEL, "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            image, labels = (tifffile.imread(io.BytesIO(archive.read(name)))
                             for name in DSB_FILES)
    return image, labels


def field_folders(out: Path, image: np.ndarray, labels: np.ndarray, tile: int = 64,
                  name: str = "dsb") -> dict[str, Path]:
    """A labelled field ((H, W) image, (H, W) instance labels) as a user would keep it, three
    folders under `out`: `field/` the whole field (`images/<name>.tif`,
    `masks/<name>_mask.tif`) and `tiles/` its `tile` x `tile` tiles (cut_tiles: stems
    `<name>-r<row>c<col>`, the field's own label ids, nuclei cut at the edges, empty where the
    field is), both FLUORESCENCE_LAYOUT with the arrays' dtypes; `png/` the tiles' 8-bit copy
    with 0/255 masks (png_copy, CELLS_LAYOUT). `name` has no "_", so that under the default
    group rule each tile is its own group. Returns {"field", "tiles", "png"} -> folder."""
    import tifffile
    out = Path(out)
    folders = {kind: out / kind for kind in ("field", "tiles", "png")}
    (folders["field"] / "images").mkdir(parents=True, exist_ok=True)
    (folders["field"] / "masks").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folders["field"] / "images" / f"{name}.tif", image)
    tifffile.imwrite(folders["field"] / "masks" / f"{name}_mask.tif", labels)
    cut_tiles(folders["tiles"], name, image, labels, tile)
    png_copy(folders["tiles"], folders["png"])
    return folders


LABELLED_TILE_DENSITY = (5000, 2500)    # pixels per nucleus: about 0..6 labels in a 64 x 64 tile


def labelled_tiles_folder(out: Path, seed: int = 2026, fields: int = 3, field: int = 256,
                          tile: int = 64) -> Path:
    """A generated look-alike of field_folders' `tiles/`: `fields` fluorescence fields of
    `field` x `field` (one nucleus per 5000..2500 pixels, so that a 64 x 64 tile holds 0..6
    labels: some empty, many 1, 2 or 3) cut into `tile` x `tile` tiles,
    `images/f<i>-r<row>c<col>.tif` and `masks/..._mask.tif` (uint16, FLUORESCENCE_LAYOUT).
    Each field's labels are renumbered to shuffled ids from 7 up, as a field's own numbering
    would be: a tile holds arbitrary ids, not 1..N, and a nucleus cut by an edge keeps its id
    in both tiles. It assumes, as the stems say (no "_"), that each tile is its own group: the
    split deals tiles, so halves of one cut nucleus may land in train and in test. Cheap:
    3 fields of 256 give 48 tiles in about a second. Deterministic from `seed`."""
    out = Path(out)
    for i in range(fields):
        image, labels = fluorescence_field(seed, i, 0, field, field, LABELLED_TILE_DENSITY)
        count = int(labels.max())
        ids = np.zeros(count + 1, np.uint16)
        ids[1:] = np.random.default_rng([seed, i, 17]).choice(
            np.arange(7, 7 + 8 * count), count, replace=False)
        cut_tiles(out, f"f{i}", image, ids[labels], tile)
    return out


def timelapse_folder(out: Path, frames: int = 20, name: str = "hela", seed: int = 2026,
                     size=(128, 128)) -> Path:
    """A time-lapse as a microscope keeps it: `images/<name>_t00.tif` ... (uint16) with
    `masks/<name>_t00_mask.tif` ... (uint16 instance labels; a nucleus keeps its id in every
    frame), FLUORESCENCE_LAYOUT, `size` (H, W). One fluorescence field a margin larger, seen
    through a window that drifts by up to a pixel a frame (stage drift: the nuclei move
    slightly), with fresh read noise in each frame. Under the default group rule (the stem
    before its last "_") every frame is in one group, `name`: the split cannot divide it
    unless told how (group=none, or e.g. ^hela_t(\\d)\\d$ for blocks of ten frames)."""
    import tifffile
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    margin, (height, width) = 8, size
    image, labels = fluorescence_field(seed, 0, 0, height + 2 * margin, width + 2 * margin)
    rng = np.random.default_rng([seed, 18])
    top = left = margin
    digits = max(2, len(str(frames - 1)))
    for t in range(frames):
        window = np.s_[top:top + height, left:left + width]
        frame = image[window] + rng.normal(0, 25, size)
        stem = f"{name}_t{t:0{digits}d}"
        tifffile.imwrite(out / "images" / f"{stem}.tif", frame.clip(0, 65535).astype(np.uint16))
        tifffile.imwrite(out / "masks" / f"{stem}_mask.tif", labels[window])
        top, left = (int(np.clip(v + rng.integers(-1, 2), 0, 2 * margin)) for v in (top, left))
    return out


VOC_LAYOUT = {"image_dir": "JPEGImages", "mask_dir": "SegmentationClass", "mask_suffix": "",
              "mask_ext": ".png"}
VOC_VOID = 255


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (its devkit's bit-interleaving colour map): 0 black,
    1 (128, 0, 0), 2 (0, 128, 0), ..., 255 (224, 224, 192), the void colour."""
    palette = []
    for index in range(256):
        r = g = b = 0
        for shift in range(7, -1, -1):
            r |= ((index >> 0) & 1) << shift
            g |= ((index >> 1) & 1) << shift
            b |= ((index >> 2) & 1) << shift
            index >>= 3
        palette += [r, g, b]
    return palette


def _scene(args) -> None:
    out, seed, scene, shot, height, width, classes, border = args
    rng = np.random.default_rng([seed, scene, shot])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # A smooth, textured background, so that the objects are not told by brightness alone.
    image = (rng.uniform(60, 140, 3) + 25 * np.sin(xx[..., None] / rng.uniform(5, 15))
             * np.cos(yy[..., None] / rng.uniform(5, 15)))
    labels = np.zeros((height, width), np.uint8)
    void = np.zeros((height, width), bool)
    kernel = np.ones((border, border), np.uint8)
    colours = {1: (200, 60, 50), 2: (50, 90, 210)}           # class 1 reddish, class 2 blue
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, classes + 1))
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        a, b = rng.uniform(0.08, 0.2) * width, rng.uniform(0.08, 0.2) * height
        inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        image[inside] = np.asarray(colours[cls]) * rng.uniform(0.8, 1.1)
        labels[inside] = cls
        # VOC's void: a band across the outline, half inside and half outside the object.
        ring = cv2.dilate(inside.astype(np.uint8), kernel) & ~cv2.erode(
            inside.astype(np.uint8), kernel).astype(bool)
        void |= ring.astype(bool)
    labels[void] = VOC_VOID
    image += rng.normal(0, 8, image.shape)
    stem = f"{2026 + scene:04d}_{shot:06d}"
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
        out / "JPEGImages" / f"{stem}.jpg", quality=92)
    mask = Image.fromarray(labels, "P")
    mask.putpalette(voc_palette())
    mask.save(out / "SegmentationClass" / f"{stem}.png")


def voc_folder(out: Path, images: int, seed: int, size=(96, 128), classes: int = 1,
               border: int = 3, workers: int = 2) -> Path:
    """`images` scenes of VOC's layout (VOC_LAYOUT), 4 shots per scene (the split's group);
    `classes` object classes (1 or 2); the void band is `border` pixels wide. The same seed
    gives the same files."""
    if classes not in (1, 2):
        raise ValueError(f"voc_folder: 1 or 2 object classes, not {classes}")
    out = Path(out)
    for sub in ("JPEGImages", "SegmentationClass"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, i // 4, i % 4 + 1, *size, classes, border) for i in range(images)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_scene, jobs, chunksize=8))
    return out


def blob_scene(rng: np.random.Generator, height: int, width: int, objects_per_mpx: float = 400,
               radius: tuple[float, float] = (3, 7)) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like field: ((H, W, 3) uint8 image, (H, W) uint8 0/1 mask) of small
    bright elliptic blobs (`objects_per_mpx` per megapixel, radii in `radius`) on a dim,
    unevenly lit background with dim specks of debris (not objects) and sensor noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 1, 2)
    light = 0.75 + 0.25 * np.cos((xx / width - phase[0]) * np.pi) \
        * np.cos((yy / height - phase[1]) * np.pi)
    image = np.zeros((height, width, 3), np.float32) + rng.uniform(15, 40, 3).astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    stain = rng.uniform(140, 255, 3)
    for _ in range(max(1, round(objects_per_mpx * height * width / 1e6))):
        axes = tuple(max(1, round(rng.uniform(*radius) * rng.uniform(0.7, 1.3))) for _ in range(2))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        angle = float(rng.uniform(0, 180))
        colour = tuple(float(c) for c in np.clip(stain * rng.uniform(0.6, 1.1), 0, 255))
        cv2.ellipse(image, centre, axes, angle, 0, 360, colour, -1)
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    for _ in range(max(1, round(objects_per_mpx / 4 * height * width / 1e6))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        speck = tuple(float(c) for c in stain * 0.3)
        cv2.circle(image, centre, int(rng.integers(1, 3)), speck, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.0) * light[..., None]
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8), mask


def large_folder(out: Path, images: int = 4, seed: int = 2026, size=(1500, 2000)) -> Path:
    """A few large images with small objects (scans; the plan caps their input by memory):
    `images/l<i>.jpg` (JPEG, quality 92) and `masks/l<i>_mask.png` (0/255), blobs of 3-7 px
    radius, `size` (H, W), deterministic from `seed`. Layout: CELLS_LAYOUT."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image, mask = blob_scene(np.random.default_rng([seed, i]), *size)
        Image.fromarray(image).save(out / "images" / f"l{i:02d}.jpg", quality=92)
        Image.fromarray(mask * 255).save(out / "masks" / f"l{i:02d}_mask.png")
    return out


TILED_FIELD_LAYOUT = {**CELLS_LAYOUT}
FIELDS_DIR = "fields"     # the whole fields, for predict: <name>.png, <name>_mask.png


def tiled_field_folder(out: Path, fields: int = 3, held_out: int = 1, seed: int = 2026,
                       field: int = 512, tile: int = 64) -> Path:
    """Fields cut into tiles, as microscopy users keep them: `fields` square fields of `field`
    pixels with small blobs (blob_scene); the first fields - held_out are cut into `tile` x
    `tile` tiles for training (`images/f<i>-r<row>c<col>.png`, `masks/..._mask.png`; no "_"
    in a stem, so each tile is its own group and split_data deals tiles, not fields), and every
    field is kept whole in `fields/` (`f<i>.png`, `f<i>_mask.png`) for predict; the held-out
    ones have no tile in the folder. Deterministic from `seed`."""
    out = Path(out)
    for sub in ("images", "masks", FIELDS_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(fields):
        image, mask = blob_scene(np.random.default_rng([seed, 1000 + i]), field, field)
        Image.fromarray(image).save(out / FIELDS_DIR / f"f{i}.png")
        Image.fromarray(mask * 255).save(out / FIELDS_DIR / f"f{i}_mask.png")
        if i >= fields - held_out:
            continue
        for top in range(0, field - tile + 1, tile):
            for left in range(0, field - tile + 1, tile):
                stem = f"f{i}-r{top // tile}c{left // tile}"
                Image.fromarray(image[top:top + tile, left:left + tile]).save(
                    out / "images" / f"{stem}.png")
                Image.fromarray(mask[top:top + tile, left:left + tile] * 255).save(
                    out / "masks" / f"{stem}_mask.png")
    return out


CORRUPTIONS = ("shifted", "swapped", "half_erased", "emptied")
CORRUPTED_FILE = "corrupted.json"


def corrupt(mask: np.ndarray, kind: str, other: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 0/1 mask -> the same mask made wrong: `shifted` right by a tenth of the
    width (the uncovered strip empty), `swapped` for `other` (another image's mask), with its
    object's right half erased (`half_erased`), or `emptied`."""
    out = np.zeros_like(mask)
    if kind == "shifted":
        dx = mask.shape[1] // 10
        out[:, dx:] = mask[:, :-dx]
    elif kind == "swapped":
        out = other.copy()
    elif kind == "half_erased":
        cols = np.flatnonzero(mask.any(0))
        out = mask.copy()
        if cols.size:
            out[:, (cols[0] + cols[-1] + 1) // 2:] = 0
    elif kind != "emptied":
        raise ValueError(f"unknown corruption {kind!r}: use one of {', '.join(CORRUPTIONS)}")
    return out


def corrupt_masks(folder: Path, fraction: float, seed: int) -> dict[str, str]:
    """Corrupts ceil(fraction * images) masks of a Carvana-layout folder in place (random
    images; the kinds of CORRUPTIONS in turn; a swap takes the mask of an image of another
    car) and writes {stem: kind} to folder/corrupted.json. Returns that record."""
    from unet.data.pairs import load_mask
    masks = sorted((Path(folder) / "train_masks").glob("*_mask.gif"))
    rng = np.random.default_rng(seed)
    count = math.ceil(fraction * len(masks))
    chosen = [masks[i] for i in sorted(rng.choice(len(masks), count, replace=False))]
    record = {}
    for i, path in enumerate(chosen):
        kind, stem = CORRUPTIONS[i % len(CORRUPTIONS)], path.name[:-len("_mask.gif")]
        others = [m for m in masks if m not in chosen and m.name.split("_")[0] != stem.split("_")[0]]
        other = load_mask(others[int(rng.integers(len(others)))]) if kind == "swapped" else None
        wrong = corrupt(load_mask(path), kind, other)
        synthetic.save_mask_gif(Image.fromarray(wrong, "L"), path)
        record[stem] = kind
    (Path(folder) / CORRUPTED_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.datasets", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["carvana", "cells", "fluorescence", "voc", "large",
                                         "tiled-field", "dsb-field", "labelled-tiles",
                                         "timelapse", "touching"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=None,
                        help="images (labelled-tiles: fields, default 3; timelapse: frames, "
                             "default 20; others: default 64)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--views", type=int, default=4, help="carvana: views per car")
    parser.add_argument("--unseen-paints", action="store_true",
                        help="carvana: val/test cars wear paints no training car wears")
    parser.add_argument("--parts", action="store_true",
                        help="carvana: palette PNG masks of background, body, wheels")
    parser.add_argument("--size", default=None,
                        help="HxW (carvana: default 1280x1918; fluorescence: 64x64; "
                             "large: 1500x2000; timelapse: 128x128)")
    parser.add_argument("--binary-labels", action="store_true",
                        help="fluorescence: 0/65535 masks instead of instance labels 1..N")
    parser.add_argument("--png", type=Path, default=None,
                        help="fluorescence, labelled-tiles: also this folder, as 8-bit PNG "
                             "with 0/255 masks")
    parser.add_argument("--corrupt", type=float, default=0.0,
                        help="carvana: share of the masks to corrupt (see corrupt_masks)")
    parser.add_argument("--classes", type=int, default=1, help="voc: object classes, 1 or 2")
    args = parser.parse_args()
    args.images = args.images or {"labelled-tiles": 3, "timelapse": 20}.get(args.kind, 64)
    if args.kind == "dsb-field":
        folders = field_folders(args.out, *dsb_field())
        # The whole field is one image, one group: too few to split, so predict's input.
        print(f"{folders['field']}: whole field; predict with "
              f"-P input_dir={folders['field'] / 'images'}")
        for kind, layout in (("tiles", FLUORESCENCE_LAYOUT), ("png", CELLS_LAYOUT)):
            print(f"{folders[kind]}: train with -P data_dir={folders[kind]} "
                  + " ".join(f"-P {key}={value}" for key, value in layout.items()))
        return
    if args.kind == "labelled-tiles":  # --images: fields
        print(labelled_tiles_folder(args.out, args.seed, args.images))
        if args.png:
            print(png_copy(args.out, args.png))
        return
    if args.kind == "timelapse":       # --images: frames
        size = tuple(int(v) for v in (args.size or "128x128").split("x"))
        print(timelapse_folder(args.out, args.images, seed=args.seed, size=size))
        return
    if args.kind == "voc":
        print(voc_folder(args.out, args.images, args.seed, classes=args.classes))
        return
    if args.kind == "touching":
        size = tuple(int(v) for v in (args.size or "128x128").split("x"))
        print(touching_folder(args.out, args.images, args.seed, size))
        return
    if args.kind == "cells":
        print(cells_folder(args.out, args.images, args.seed))
        return
    if args.kind == "large":           # --images 4 --size 1500x2000 for the set
        size = tuple(int(v) for v in (args.size or "1500x2000").split("x"))
        print(large_folder(args.out, args.images, args.seed, size))
        return
    if args.kind == "tiled-field":     # --images: fields (the last one held out)
        print(tiled_field_folder(args.out, args.images, seed=args.seed))
        return
    if args.kind == "fluorescence":
        size = tuple(int(v) for v in (args.size or "64x64").split("x"))
        print(fluorescence_folder(args.out, args.images, args.seed, size, args.binary_labels))
        if args.png:
            print(png_copy(args.out, args.png))
        return
    size = tuple(int(v) for v in (args.size or "1280x1918").split("x"))
    print(carvana_folder(args.out, args.images, args.seed, size, views=args.views,
                         unseen_paints=args.unseen_paints, parts=args.parts))
    if args.corrupt:
        print(f"corrupted: {corrupt_masks(args.out, args.corrupt, args.seed)}")


if __name__ == "__main__":
    main()
