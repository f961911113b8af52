"""Masks that look wrong: a label-quality score per image from the model's own predictions.

The score of a mask is the disagreement between it and the model's prediction, weighted by how
sure the model is, relative to the size of the objects (cleanlab's idea for segmentation, made
per image). For each foreground class c, with q the predicted probability of c and m = (mask ==
c), a pixel disagrees when q is on the other side of one half from m; its weight grows from 0
(q = 0.5: the model is unsure) to 1 (q = 0 or 1: the model is certain). The class's score is the
sum of the weights over the pixels where the mask or the prediction has the class (at least
`min_area` of the image, so that a few pixels of a tiny object cannot rank an image first):

    score_c = sum(clip(2 |m - q| - 1, 0, 1)) / max(|m or q > 0.5|, min_area * H * W)

and an image's own score is the worst of its classes. 0: the model agrees with the mask; about
1: the model is sure of an object that the mask lacks entirely (an emptied mask), or the
reverse; a mask shifted by a tenth of the width scored 0.25-0.31 when measured, a half-erased
one 0.22-0.42 (docs/label-quality.md).

The ranked score is the excess of the own score over the median of the other images of the same
group (the split's rule, unet.data.pairs.GroupRule: the car, the slide), where the group holds at
least GROUP_MIN images: label errors come one image at a time, while a car of a look the model
never learned (a black car on a dark floor) makes it disagree with every view of that car. Without
this, such a car's right masks filled the head of a 64-image folder's ranking
(docs/label-quality.md).

The predictions come from the trained model itself. A small U-Net trained for minutes does not
learn a few wrong masks by heart (docs/label-quality.md has the measurements), so its
predictions on training images are close to what it would predict without them.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from unet.data.pairs import GroupRule, Pair
from unet.images.reading import load_image
from unet.images.transforms import resize_image, resize_mask
from unet.inference.instances import foreground
from unet.labels.masks import VOID

MIN_AREA = 0.01          # the smallest object area a score is relative to, share of the image
GROUP_MIN = 3            # a group's median is taken off its images' scores from this size on


def class_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """(H, W) probabilities of the object -> (H, W, 2); (H, W, K) are returned as they are."""
    return torch.stack([1 - probs, probs], -1) if probs.ndim == 2 else probs


def disagreement(probs, mask) -> torch.Tensor:
    """Per-pixel confident disagreement of each foreground class.

    probs: (H, W) float probabilities of the object, or (H, W, K) of each class (softmax);
    mask: (H, W) integer labels (0/1, or class indices 0..K-1). Returns (K-1, H, W) float in
    [0, 1]: 0 where the model agrees with the mask or is unsure (0.5), 1 where it is certain of
    the other answer. Void pixels (mask VOID) disagree with nothing: 0."""
    q = class_probabilities(torch.as_tensor(probs, dtype=torch.float32))[..., 1:]
    m = torch.stack([torch.as_tensor(mask) == c for c in range(1, q.shape[-1] + 1)], -1)
    weight = (2 * (m.float() - q).abs() - 1).clamp(0, 1)
    return weight.permute(2, 0, 1) * (torch.as_tensor(mask) != VOID)


def class_scores(probs, mask, min_area: float = MIN_AREA) -> torch.Tensor:
    """(K-1,) score of each foreground class (module docstring); inputs as `disagreement`."""
    weight = disagreement(probs, mask)
    q = class_probabilities(torch.as_tensor(probs, dtype=torch.float32))[..., 1:]
    m = torch.stack([torch.as_tensor(mask) == c for c in range(1, q.shape[-1] + 1)])
    valid = torch.as_tensor(mask) != VOID
    union = ((m | (q.permute(2, 0, 1) > 0.5)) & valid).flatten(1).sum(1).float()
    floor = min_area * mask.shape[0] * mask.shape[1]
    return weight.flatten(1).sum(1) / union.clamp(min=floor)


def image_score(probs, mask, min_area: float = MIN_AREA) -> float:
    """The image's score: its worst class's (module docstring)."""
    return class_scores(probs, mask, min_area).max().item()


def prediction_dice(probs, mask) -> tuple[float, int]:
    """(Dice of the predicted labels vs the mask, mean over the foreground classes either has;
    1.0 when neither has any; pixels whose predicted label differs from the mask's), over the
    non-void pixels."""
    m = torch.as_tensor(mask).long()
    valid = m != VOID
    p = torch.where(valid, class_probabilities(
        torch.as_tensor(probs, dtype=torch.float32)).argmax(-1), VOID)
    dices = []
    for c in range(1, int(class_probabilities(torch.as_tensor(probs)).shape[-1])):
        a, b = p == c, m == c
        total = int(a.sum() + b.sum())
        if total:
            dices.append(2 * int((a & b).sum()) / total)
    return (float(np.mean(dices)) if dices else 1.0), int((p != m).sum())


@dataclasses.dataclass
class Row:
    """One image's line of the ranking."""
    stem: str
    subset: str                  # train | val | test
    score: float                 # ranked: image_score less group_median, at least 0
    dice: float                  # prediction vs mask, at the scoring size
    disagree_px: int             # pixels whose predicted label differs, at the scoring size
    class_scores: list[float]    # per foreground class, own scores
    flagged: bool = False
    image_score: float | None = None     # the image's own score (None: the same as score)
    group_median: float = 0.0    # median own score of the group's other images (0: group too small)

    def __post_init__(self):
        if self.image_score is None:
            self.image_score = self.score


def relative_to_groups(rows: Sequence[Row], groups: dict[str, str],
                       min_size: int = GROUP_MIN) -> None:
    """Sets each row's `score` to its own score less the median own score of the other images
    of its group (`groups`: stem -> group), at least 0, in groups of at least `min_size`
    images; rows of smaller groups keep their own score."""
    members: dict[str, list[Row]] = {}
    for row in rows:
        members.setdefault(groups[row.stem], []).append(row)
    for group in members.values():
        if len(group) < min_size:
            continue
        own = [row.image_score for row in group]
        for i, row in enumerate(group):
            row.group_median = float(np.median(own[:i] + own[i + 1:]))
            row.score = max(0.0, row.image_score - row.group_median)


@dataclasses.dataclass
class Scored:
    """What the panels need of an image: (h, w, 3) uint8, (h, w) mask, (h, w) predicted labels,
    (h, w) float disagreement (the worst class's)."""
    image: np.ndarray
    mask: np.ndarray
    pred: np.ndarray
    heat: np.ndarray


def score_pairs(segmenter, subsets: dict[str, Sequence[Pair]],
                read_mask: Callable[[Path], np.ndarray], threshold: float,
                batch_size: int = 16, min_area: float = MIN_AREA, keep: int = 8,
                group_of: Callable[[str], str] = GroupRule().of
                ) -> tuple[list[Row], dict[str, Scored]]:
    """Scores every pair of every subset with `segmenter` (unet.inference.segmenter.Segmenter) at
    its input size: the image and mask are resized to it (the mask by nearest neighbour), so the
    cost is one forward pass per image. Returns the rows ranked worst first (scores relative to
    their group: `relative_to_groups`), `flagged` where the score is above `threshold`, and the
    arrays of the `keep` worst (by stem) for panels. `group_of`: a stem's group (the split's
    rule, unet.data.pairs.GroupRule)."""
    rows, arrays = [], {}
    items = [(name, pair) for name, pairs in subsets.items() for pair in pairs]
    for start in range(0, len(items), batch_size):
        for name, pair, image, mask, probs in predicted(segmenter, items[start:start + batch_size],
                                                        read_mask):
            scores = class_scores(probs, mask, min_area)
            dice, wrong = prediction_dice(probs, mask)
            rows.append(Row(pair.stem, name, scores.max().item(), dice, wrong, scores.tolist()))
            arrays[pair.stem] = (image, mask, probs)
            # Keep the arrays of the worst own scores so far only: a 5,000-image folder stays
            # small. The few of the final worst that this dropped are predicted again below.
            if len(arrays) > 4 * keep:
                worst = {r.stem for r in sorted(rows, key=rank_key)[:keep]}
                arrays = {k: v for k, v in arrays.items() if k in worst}
    relative_to_groups(rows, {pair.stem: group_of(pair.stem) for _, pair in items})
    for row in rows:
        row.flagged = row.score > threshold
    rows.sort(key=rank_key)
    missing = {r.stem for r in rows[:keep]} - set(arrays)
    again = [item for item in items if item[1].stem in missing]
    for _, pair, image, mask, probs in predicted(segmenter, again, read_mask):
        arrays[pair.stem] = (image, mask, probs)
    kept = {}
    for row in rows[:keep]:
        image, mask, probs = arrays[row.stem]
        pred = class_probabilities(torch.as_tensor(probs)).argmax(-1).numpy().astype(np.uint8)
        heat = disagreement(probs, mask).max(0).values.numpy()
        kept[row.stem] = Scored(image, mask, pred, heat)
    return rows, kept


def predicted(segmenter, items: Sequence[tuple[str, Pair]],
              read_mask: Callable[[Path], np.ndarray]):
    """(subset, pair, (h, w, 3) image, (h, w) mask, probabilities) of each item, all at the
    segmenter's input size (h, w), predicted in one batch."""
    if not items:
        return
    h, w = segmenter.image_size
    images = np.stack([resize_image(load_image(p.image, (h, w), segmenter.window), (h, w))
                       for _, p in items])
    for (name, pair), image, probs in zip(items, images, segmenter.probabilities_resized(images)):
        if getattr(segmenter, "instances", False):    # its masks are the foreground
            probs = foreground(probs)
        yield name, pair, image, resize_mask(read_mask(pair.mask), (h, w)), probs


def rank_key(row: Row) -> tuple[float, str]:
    """Worst first; ties by stem, so the ranking does not depend on the order of the images."""
    return -row.score, row.stem


def write_ranking(path: Path, rows: Sequence[Row], class_names: Sequence[str]) -> None:
    """rows as CSV, worst first: rank, stem, subset, score, dice, disagree_px, flagged,
    image_score, group_median, and with K > 2 classes a score_<name> column per foreground
    class (own scores)."""
    per_class = len(class_names) > 2
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "stem", "subset", "score", "dice", "disagree_px", "flagged",
                         "image_score", "group_median"]
                        + ([f"score_{n}" for n in class_names[1:]] if per_class else []))
        for rank, r in enumerate(rows, start=1):
            writer.writerow([rank, r.stem, r.subset, f"{r.score:.4f}", f"{r.dice:.4f}",
                             r.disagree_px, str(r.flagged).lower(), f"{r.image_score:.4f}",
                             f"{r.group_median:.4f}"]
                            + ([f"{s:.4f}" for s in r.class_scores] if per_class else []))


def read_stems(path: Path) -> list[str]:
    """The stems a file names: one per line ('#' starts a comment), or a ranking CSV written
    by write_ranking, whose flagged rows are taken."""
    lines = [line.split("#")[0].strip() for line in Path(path).read_text().splitlines()]
    lines = [line for line in lines if line]
    if lines and lines[0].startswith("rank,stem,"):
        with open(path, newline="") as f:
            return [row["stem"] for row in csv.DictReader(f) if row["flagged"] == "true"]
    return lines
