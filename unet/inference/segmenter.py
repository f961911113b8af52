"""Inference on images of any size: what `evaluate`, the logged model and serving all run."""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from unet.config.checks import SCALE_MODES, TTA_MODES
from unet.images.intensity import Window
from unet.images.transforms import resize_image, to_input
from unet.inference import tiling
from unet.inference.instances import Watershed, foreground
from unet.network.model import UNet
from unet.network.precision import Precision, choose_precision, prepare

# Test-time augmentation: the flips whose predictions are averaged (dims of (B, C, H, W)).
TTA_FLIPS = dict(zip(TTA_MODES, ([()], [(), (3,)], [(), (3,), (2,), (2, 3)])))
# Tiles (Segmenter.tile_size): the training input times TILE_MULTIPLE (fewer tiles, less
# overlap recomputed), unless such a tile holds over TILE_PIXELS; TILE_BATCH tiles at a time.
TILE_MULTIPLE, TILE_PIXELS, TILE_BATCH = 2, 1024 * 1024, 4


def as_written(mask: np.ndarray, binary: bool) -> np.ndarray:
    """(H, W) uint8 mask (Segmenter.decide) -> as every output file holds it: a binary mask as
    0/255 (a picture; read back at half its top value), a class map as its indices 0..K-1."""
    return mask * 255 if binary else mask

class Segmenter:
    """A trained UNet plus the preprocessing it was trained with.

    Scale (`predict_scale`, chosen at training from the data, unet.planning.sizing.scale_rule):
    * "fit": an (H, W, 3) uint8 image of any size is resized to the training input
      `image_size`, as every model did before scales existed. For photos that frame their
      object whatever their resolution (a 1918x1280 photo of a car holds the car 8 times
      larger than a 240x160 one), the object then reaches the network at the size it had in
      training, and the cost per image does not grow with its pixels.
    * "native": the image is resized by the model's `scale` (sy, sx), the pixels of the
      network input per pixel of an original training image (training input size / the
      training folder's median image size, recorded by train), to (round(H sy), round(W sx)):
      objects keep the size in pixels they had in training, as fields, tiles and scans with a
      pixel size need. For a folder of one image size, an image of that size lands exactly
      on the training input, as with "fit". In a folder of mixed sizes every image was
      resized to the training input, so objects were seen at several scales; the median
      size's stands for them all.
    A state without `predict_scale` (logged before it existed) is "native" if it has a scale
    (what such models did), else "fit"; a model without a scale (logged before scales) can
    only fit. `with_predict_scale` overrides the mode per call (predict's and serving's
    `predict_scale`).

    Tiles (native only: at fit every image is the training input, never over the tile): an
    image whose size at scale exceeds the tile (`tile_size`: the training input
    times TILE_MULTIPLE, or the input itself where that tile would hold over TILE_PIXELS) on
    either side is predicted by overlapping tiles (`overlap` of a tile; unet.inference.tiling)
    blended with Gaussian weights; a smaller one whole, as before. Memory is then bounded for any
    image of (H, W) pixels, K the channels (1, or K classes), (h, w) its size at scale:
    the decoded image 3HW bytes, its copy at scale 3hw (none at scale 1), the blended map
    4hwK, the map at full size 4HWK (none at scale 1), the mask HW, and the network's
    activations on TILE_BATCH tiles, which do not grow with the image (~40 bytes per tile
    pixel per first-level feature: ~250 MB for the plan's CPU network, 16..128, on 256x384
    tiles). At scale 1: ~ (4 + 4K) bytes per pixel, 0.5 GB for a binary model on
    8000 x 8000 (tests/test_large_images.py measures predict and serving on one).

    The probabilities are resized back to (H, W). With `tta` "hflip" (or "flips":
    horizontal, vertical and both) the probabilities are averaged over the flipped images
    (each tile's, when tiled), each flipped back; the train step keeps TTA only where it
    measured a gain.

    `window`: the intensity window (low, high) measured on the training images, which maps
    16-bit and float images to uint8 wherever they are read for this model (unet.images.intensity);
    None for a model trained on 8-bit images.

    Instances (`watershed` set: a model trained for objects, its classes background, interior,
    border; unet.labels.borders): its masks are the foreground (interior or border), 0/1 as a
    binary model's, and `labels` turns a probability map into a label image by the seeded
    watershed whose settings were chosen on the validation split (unet.inference.instances).
    The watershed runs on the whole image's map, after tiles are blended, so an object across
    a tile seam is one object, never cut or counted twice.
    """

    runtime = "torch"    # what runs the network (unet.inference.onnx_runtime.OnnxSegmenter: onnx, onnx-int8)
    overlap = 0.5        # of a tile shared with its neighbour (nnU-Net's; MONAI's default 0.25)

    def __init__(self, model: UNet, image_size: tuple[int, int], precision: Precision | None = None,
                 tta: str = "none", classes: tuple[str, ...] | None = None,
                 scale: tuple[float, float] | None = None, window: Window | None = None,
                 predict_scale: str | None = None, watershed: Watershed | None = None):
        if tta not in TTA_FLIPS:
            raise ValueError(f"tta={tta!r}: use one of {', '.join(TTA_FLIPS)}")
        self.precision = precision or choose_precision("auto")
        self.model = prepare(model, self.precision).eval()
        self.image_size = tuple(image_size)
        self.tta = tta
        # Class names, background first: K > 2 for a K-channel (softmax) model; None: binary.
        self.classes = tuple(classes) if classes else None
        self.scale = tuple(float(s) for s in scale) if scale else None
        self.window = tuple(float(v) for v in window) if window is not None else None
        # None: what models did before the mode existed (native with a scale, else fit).
        self.predict_scale = predict_scale or ("native" if self.scale else "fit")
        self.check_predict_scale(self.predict_scale)
        self.watershed = watershed     # None: no instances

    @property
    def instances(self) -> bool:
        """Whether the model gives objects (label images) beside its foreground mask."""
        return self.watershed is not None

    @property
    def binary(self) -> bool:
        """Whether its masks are 0/1: a 1-channel (sigmoid) model, or one for instances."""
        return self.classes is None or self.instances

    @classmethod
    def from_state(cls, state: dict, precision: Precision | None = None) -> "Segmenter":
        """From {"features", "image_size", "model", "tta", "classes", "scale", "window",
        "predict_scale", "watershed"} as written by `to_state` (a state of before windows has
        none: the model reads 8-bit images; of before predict_scale, see the class docstring;
        of before instances, no watershed)."""
        classes = state.get("classes")
        model = UNet(out_channels=len(classes) if classes else 1, features=state["features"])
        model.load_state_dict(state["model"])
        return cls(model, state["image_size"], precision, state.get("tta", "none"), classes,
                   state.get("scale"),     # None in a state written before scales existed
                   state.get("window"), state.get("predict_scale"),
                   Watershed(**state["watershed"]) if state.get("watershed") else None)

    def to_state(self) -> dict:
        return {"features": list(self.model.features), "image_size": list(self.image_size),
                "tta": self.tta, "classes": list(self.classes or []),
                "scale": list(self.scale) if self.scale else None,
                "window": list(self.window) if self.window is not None else None,
                "predict_scale": self.predict_scale,
                "watershed": dataclasses.asdict(self.watershed) if self.watershed else None,
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()}}

    @property
    def step(self) -> int:
        """What the network's input sides are best multiples of: 2**levels (UNet.min_size)."""
        return 2 ** len(self.model.features)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size (h, w) an (H, W) image is predicted at: native, scaled by `scale` (at least
        the network's smallest input); fit, the training input size."""
        if self.predict_scale == "fit":
            return self.image_size
        return (max(self.step, round(height * self.scale[0])),
                max(self.step, round(width * self.scale[1])))

    @property
    def tile_size(self) -> tuple[int, int]:
        """(th, tw): the training input times TILE_MULTIPLE, or the input itself where that
        would hold more than TILE_PIXELS pixels; sides rounded up to multiples of `step`."""
        height, width = self.image_size
        k = TILE_MULTIPLE if TILE_MULTIPLE ** 2 * height * width <= TILE_PIXELS else 1
        return tiling.pad_size(k * height, self.step), tiling.pad_size(k * width, self.step)

    @property
    def tile_stride(self) -> tuple[int, int]:
        """How far apart tiles start: (1 - overlap) of the tile, a multiple of `step`."""
        return tuple(max(self.step, int(t * (1 - self.overlap)) // self.step * self.step)
                     for t in self.tile_size)

    def tiled(self, size: tuple[int, int]) -> bool:
        """Whether an image of `size` (h, w) at scale is predicted by tiles."""
        return size[0] > self.tile_size[0] or size[1] > self.tile_size[1]

    def with_tta(self, tta: str) -> "Segmenter":
        """The same weights with another test-time augmentation ("auto": this one's)."""
        if tta == "auto" or tta == self.tta:
            return self
        if tta not in TTA_FLIPS:
            raise ValueError(f"tta={tta!r}: use one of {', '.join(TTA_FLIPS)}")
        other = copy.copy(self)        # the same weights and runtime (unet.inference.onnx_runtime)
        other.tta = tta
        return other

    def with_predict_scale(self, predict_scale: str) -> "Segmenter":
        """The same weights predicting at another scale mode ("auto": this one's). ValueError
        for an unknown mode, or "native" on a model without a scale."""
        if predict_scale == "auto" or predict_scale == self.predict_scale:
            return self
        self.check_predict_scale(predict_scale)
        other = copy.copy(self)        # the same weights and runtime (unet.inference.onnx_runtime)
        other.predict_scale = predict_scale
        return other

    def check_predict_scale(self, predict_scale: str) -> None:
        if predict_scale not in SCALE_MODES:
            raise ValueError(f"predict_scale={predict_scale}: use native or fit (auto: the "
                             f"model's own)")
        if predict_scale == "native" and self.scale is None:
            raise ValueError("predict_scale=native: this model records no training scale "
                             "(logged before scales existed); it can only fit")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalized input on the model's device -> (B, C, h, w) float32
        logits. unet.inference.onnx_runtime.OnnxSegmenter runs the same network in ONNX Runtime."""
        self.model.eval()   # the model may be shared with a Trainer that set train mode
        with self.precision.context():
            return self.model(x).float()

    @torch.no_grad()
    def probabilities_resized(self, batch: np.ndarray) -> np.ndarray:
        """(B, h, w, 3) uint8 at the training size -> (B, h, w) float32 probabilities of the
        object, or with K classes (B, h, w, K) of each class (softmax)."""
        x = self.precision.to_device(torch.from_numpy(to_input(batch)))
        flips = TTA_FLIPS[self.tta]
        total = None
        for dims in flips:
            logits = self.logits(x.flip(dims) if dims else x)
            probs = torch.sigmoid(logits[:, :1]) if self.classes is None \
                else torch.softmax(logits, 1)
            probs = probs.flip(dims) if dims else probs          # flip back
            total = probs if total is None else total + probs
        probs = (total / len(flips)).cpu()
        return (probs[:, 0] if self.classes is None else probs.permute(0, 2, 3, 1)).numpy()

    def _tiled(self, image: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 at scale -> (h, w) float32 probabilities ((h, w, K) with K classes)
        by overlapping tiles (unet.inference.tiling.sliding_window), each with the test-time
        flips."""
        return tiling.sliding_window(self.probabilities_resized, image, self.tile_size,
                                     self.tile_stride, self.step, TILE_BATCH)

    def probabilities(self, images: Iterable[np.ndarray], *,
                      sizes: Sequence[tuple[int, int]] | None = None, batch_size: int = 16
                      ) -> Iterator[np.ndarray]:
        """Yields one probability map per (h, w, 3) uint8 image at sizes[i] = (H, W), its full
        size (default: the image's own; an image decoded smaller, as a JPEG in draft mode by
        unet.images.reading.read_for_model, gives its full size here): (H, W) float32, or
        (H, W, K) with K classes. Up to `batch_size` images of one input size run as a batch;
        one larger than the tile runs alone, by tiles, in its turn (so that at most one
        full-size map of a large image is held at a time)."""
        batch: list[np.ndarray] = []
        full: list[tuple[int, int]] = []

        def flush():
            yield from self._maps(batch, full)
            batch.clear()
            full.clear()

        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} "
                                 f"{image.shape}")
            size = tuple(sizes[i]) if sizes is not None else image.shape[:2]
            target = self.input_size(*size)
            if self.tiled(target):         # alone, in order: never a batch of large images
                yield from flush()
            full.append(size)
            batch.append(resize_image(image, target))   # hold the copy at scale only
            if len(batch) == batch_size or self.tiled(target):
                yield from flush()
        if batch:
            yield from flush()

    def _maps(self, images: list[np.ndarray], sizes: list[tuple[int, int]]
              ) -> Iterator[np.ndarray]:
        """Images at their input size -> their maps at `sizes`, one at a time: those of one
        size run as one batch, each larger than the tile by tiles when its turn comes."""
        whole: dict[int, np.ndarray] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if not self.tiled(image.shape[:2]):
                groups.setdefault(image.shape[:2], []).append(i)
        for indices in groups.values():
            whole.update(zip(indices, self.probabilities_resized(
                np.stack([images[i] for i in indices]))))
        for i, (h, w) in enumerate(sizes):
            p = whole.pop(i) if i in whole else self._tiled(images[i])
            yield p if p.shape[:2] == (h, w) else cv2.resize(p, (w, h),
                                                              interpolation=cv2.INTER_LINEAR)

    def decide(self, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """A probability map at its size -> (H, W) uint8 mask: 0/1 (the probability above
        `threshold`; for instances, the object's: interior or border), or with K classes the
        index of the most probable class."""
        if self.instances:
            return (foreground(probs) > threshold).astype(np.uint8)
        return (probs > threshold if self.binary else probs.argmax(-1)).astype(np.uint8)

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """An instance model's (H, W, 3) probability map -> (H, W) int32 label image, 0
        background, objects 1..N (the watershed chosen at training)."""
        return self.watershed.labels(probs)

    def objects(self, images: Iterable[np.ndarray], threshold: float = 0.5, *,
                sizes: Sequence[tuple[int, int]] | None = None, batch_size: int = 16
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """An instance model's outputs, one per image at its full size: ((H, W) uint8 0/1
        foreground mask, (H, W) int32 labels, (H, W) float32 object probability)."""
        for probs in self.probabilities(images, sizes=sizes, batch_size=batch_size):
            objects = foreground(probs)          # once: the mask and the table both need it
            yield (objects > threshold).astype(np.uint8), self.labels(probs), objects

    def masks(self, images: Iterable[np.ndarray], threshold: float = 0.5, *,
              sizes: Sequence[tuple[int, int]] | None = None, batch_size: int = 16
              ) -> Iterator[np.ndarray]:
        """Yields one (H, W) uint8 mask per image at its full size (`probabilities`, then
        `decide`): what evaluate, predict and serving write."""
        for probs in self.probabilities(images, sizes=sizes, batch_size=batch_size):
            yield self.decide(probs, threshold)
