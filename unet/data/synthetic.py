"""The built-in data set: Carvana-like studio photos of cars, generated deterministically.

Each car id gets a body shape and colour; each of its views changes pose (facing, tilt,
foreshortening), scale, position and lighting. Backgrounds are textured with patches whose
colours come from the same palette as the cars (always including the car's own colour), plus a
shadow under the car that is not part of the mask, so no colour threshold separates car from
background: a model has to learn shapes. Files follow Carvana's layout and naming:
`train/<car>_<view>.jpg` and `train_masks/<car>_<view>_mask.gif` (palette GIF, indices 0/1).

With classes=4 the same cars are labelled by part: 0 background, 1 body, 2 windows, 3 wheels
(the binary mask is exactly the union of the three parts).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VIEWS_PER_CAR = 4
PART_NAMES = ("background", "body", "windows", "wheels")     # the indices of classes=4 masks
PALETTE = np.array([  # car paints; backgrounds draw from the same colours
    (200, 30, 30), (30, 60, 170), (230, 230, 225), (25, 25, 28), (130, 135, 140),
    (200, 170, 40), (40, 120, 60), (150, 90, 40), (90, 30, 110), (220, 110, 30),
], dtype=np.float32)


def _car_shape(rng: np.random.Generator) -> dict:
    """Per-car geometry in a unit frame: x along the car (0..1), y up (0..1)."""
    hood = rng.uniform(0.12, 0.25)
    trunk = rng.uniform(0.08, 0.2)
    belt = rng.uniform(0.45, 0.55)          # top of the lower body
    roof = rng.uniform(0.78, 0.95)
    cabin_front, cabin_back = 1 - hood - rng.uniform(0.02, 0.08), trunk + rng.uniform(0.05, 0.12)
    body = [(0.0, 0.18), (0.0, belt - 0.08), (0.04, belt), (1 - 0.06, belt - 0.04),
            (1.0, belt - 0.15), (1.0, 0.18), (0.92, 0.1), (0.08, 0.1)]
    cabin = [(cabin_back, belt - 0.01), (cabin_back + rng.uniform(0.08, 0.15), roof),
             (cabin_front - rng.uniform(0.1, 0.2), roof), (cabin_front, belt - 0.01)]
    wheel_r = rng.uniform(0.09, 0.12)
    return {"body": body, "cabin": cabin, "wheels": [(0.2, 0.12), (0.8, 0.12)], "wheel_r": wheel_r,
            "paint": PALETTE[rng.integers(len(PALETTE))]}


def _background(rng: np.random.Generator, h: int, w: int, paint: np.ndarray) -> Image.Image:
    """Wall and floor with patches in car colours, the car's own among them."""
    wall, floor = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
    horizon = int(h * rng.uniform(0.45, 0.7))
    img = np.empty((h, w, 3), np.float32)
    img[:horizon], img[horizon:] = wall, floor
    canvas = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i in range(rng.integers(5, 10)):
        colour = paint if i < 2 else PALETTE[rng.integers(len(PALETTE))]
        colour = tuple(int(c) for c in np.clip(colour + rng.normal(0, 12, 3), 0, 255))
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.5) * w, y0 + rng.uniform(0.05, 0.4) * h
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    return canvas


def render(car_seed: int, view: int, height: int, width: int, classes: int = 2,
           paint: int | None = None) -> tuple[Image.Image, Image.Image]:
    """One view of one car -> (RGB image, 'L' mask), both (height, width). The mask holds 0/1
    (classes=2) or the part indices of PART_NAMES (classes=4); the image is the same.
    `paint` (an index of PALETTE) overrides the car's own colour, e.g. to keep some colours
    out of a training split. One function because its random draws must stay in this order:
    the built-in data set is a function of the seed, and cached or logged copies of it agree."""
    if classes not in (2, len(PART_NAMES)):
        raise ValueError(f"synthetic classes: 2 or {len(PART_NAMES)}, not {classes}")
    shape = _car_shape(np.random.default_rng(car_seed))
    if paint is not None:
        shape["paint"] = PALETTE[paint]
    rng = np.random.default_rng([car_seed, view])
    canvas = _background(rng, height, width, shape["paint"])

    length = rng.uniform(0.6, 0.9) * width * rng.uniform(0.75, 1.0)   # foreshortened views
    tall = length * rng.uniform(0.45, 0.55)
    facing = 1 if view % 2 else -1
    cx, base = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.72, 0.9)
    tilt = np.deg2rad(rng.uniform(-8, 8))
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])

    def to_pixels(points):
        p = np.asarray(points, np.float64)
        xy = np.stack([(p[:, 0] - 0.5) * length * facing, -p[:, 1] * tall], axis=1) @ rot.T
        return [tuple(v) for v in xy + (cx, base)]

    draw = ImageDraw.Draw(canvas)
    shadow = to_pixels([(-0.05, 0.12), (1.05, 0.0)])
    draw.ellipse([min(shadow[0][0], shadow[1][0]), base - 0.06 * tall,
                  max(shadow[0][0], shadow[1][0]), base + 0.06 * tall], fill=(20, 20, 22))
    mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(mask)
    paint = shape["paint"]
    shade = tuple(int(c) for c in np.clip(paint * rng.uniform(0.55, 0.8), 0, 255))
    glass = tuple(int(c) for c in rng.uniform(60, 140, 3))
    for part, colour in (("body", paint), ("cabin", shade)):
        pts = to_pixels(shape[part])
        draw.polygon(pts, fill=tuple(int(c) for c in colour))
        mask_draw.polygon(pts, fill=1)
    window = [(x, 0.5 * y + 0.5 * (sum(q[1] for q in shape["cabin"]) / 4))
              for x, y in shape["cabin"]]
    draw.polygon(to_pixels(window), fill=glass)
    parts = Image.new("L", (width, height), 0)     # windows 2, wheels 3 (classes=4 only)
    parts_draw = ImageDraw.Draw(parts)
    parts_draw.polygon(to_pixels(window), fill=2)
    r = shape["wheel_r"] * length
    for wx, wy in shape["wheels"]:
        (px, py), = to_pixels([(wx, wy)])
        for radius, colour in ((r, (15, 15, 15)), (0.5 * r, (150, 150, 155))):
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
        mask_draw.ellipse([px - r, py - r, px + r, py + r], fill=1)
        parts_draw.ellipse([px - r, py - r, px + r, py + r], fill=3)
    if classes > 2:
        # Parts inside the car only: glass drawn past the cabin's slanted edges stays
        # background, as in the binary mask.
        car, part = np.asarray(mask), np.asarray(parts)
        mask = Image.fromarray(np.where(car > 0, np.maximum(car, part), 0).astype(np.uint8))

    # Lighting (a gradient across the scene), sensor noise and a little lens blur.
    img = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)), np.float32)
    light = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.9, 1.25), width, dtype=np.float32)
    img = img * light[None, :, None] + rng.normal(0, 8, img.shape).astype(np.float32)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)), mask


# Palette of the masks: index 1 white (Carvana's binary GIFs), then the parts' colours.
MASK_PALETTE = [0, 0, 0, 255, 255, 255, 70, 140, 255, 255, 200, 0]


def save_mask_gif(mask: Image.Image, path: Path) -> None:
    """Writes an 'L' mask of indices as a palette GIF like Carvana's (index 1 = white)."""
    gif = Image.fromarray(np.asarray(mask), "P") if mask.mode == "L" else mask.convert("P")
    gif.putpalette(MASK_PALETTE + [0, 0, 0] * (256 - len(MASK_PALETTE) // 3))
    gif.save(path)


def generate(out_dir: Path, num_images: int, height: int, width: int, seed: int,
             classes: int = 2) -> list[str]:
    """Writes `num_images` pairs under out_dir/train and out_dir/train_masks (binary masks, or
    part indices with classes=4); returns the stems."""
    out_dir = Path(out_dir)
    (out_dir / "train").mkdir(parents=True, exist_ok=True)
    (out_dir / "train_masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stems = []
    num_cars = -(-num_images // VIEWS_PER_CAR)
    for car_seed in rng.integers(0, 2**63 - 1, size=num_cars):
        car_id = f"{int(car_seed) & 0xFFFFFFFFFFFF:012x}"
        for view in range(1, VIEWS_PER_CAR + 1):
            if len(stems) == num_images:
                break
            image, mask = render(int(car_seed), view, height, width, classes)
            stem = f"{car_id}_{view:02d}"
            image.save(out_dir / "train" / f"{stem}.jpg", quality=90)
            save_mask_gif(mask, out_dir / "train_masks" / f"{stem}_mask.gif")
            stems.append(stem)
    return stems
