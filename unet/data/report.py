"""The data check's report: what it found in a folder (problems that make a file unusable,
notes on files used after a conversion or ignored) and how the masks are read; its text is
the data report split_data logs (unet.data.check fills it)."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from unet.data.pairs import Pair
from unet.labels.classes import Classes

PROBLEMS = {   # kind -> what the report says
    "no_mask": "image without mask",
    "no_image": "mask without image",
    "duplicate_stem": "two images share one stem",
    "unreadable_image": "unreadable or truncated image",
    "unreadable_mask": "unreadable or truncated mask",
    "size_mismatch": "image and mask sizes differ",
    "multiclass_mask": "mask has more than 2 classes",
    "bad_label": "mask value that is not a class",
}
# What to tell the user once when masks are refused for their values: the parameters that
# would read them otherwise.
VALUE_HINT = {
    "multiclass_mask": "if the values are object labels pass -P mask_kind=instances, if class "
                       "indices -P mask_kind=classes, if grey levels to threshold at half -P "
                       "multiclass_masks=threshold",
    "bad_label": "if the values are object labels pass -P mask_kind=instances, if 0/255 "
                 "masks -P mask_kind=binary, else declare the classes with -P classes=...",
}
NOTES = {
    "grayscale_image": "grayscale image (expanded to RGB)",
    "rgba_image": "image with alpha (alpha dropped)",
    "16bit_image": "16-bit or float image (to 8 bits by the training images' intensity window)",
    "antialiased_mask": "mask with antialiased edges (thresholded at half)",
    "multiclass_mask_thresholded": "mask with more than 2 classes (thresholded at half)",
    "empty_mask": "empty mask (no foreground; used)",
    "instance_labels": "mask of instance labels (every nonzero label read as foreground)",
    "hidden_file": "hidden file (ignored)",
    "non_image_file": "not an image or mask by its name (ignored)",
    "excluded": "left out by parameter exclude",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    path: Path
    kind: str          # a key of PROBLEMS or NOTES
    detail: str = ""

    def line(self) -> str:
        what = PROBLEMS.get(self.kind) or NOTES[self.kind]
        return f"{self.path}: {what}" + (f" ({self.detail})" if self.detail else "")


@dataclasses.dataclass
class DataReport:
    pairs: list[Pair]            # the usable pairs (problems dropped)
    problems: list[Finding]      # files that can't be used
    notes: list[Finding]         # files used after a conversion, or ignored
    classes: Classes = Classes.numbered(2)   # detected from the masks, or declared
    ignore_index: int | None = None          # the void value, detected or declared
    void_share: float = 0.0                  # void pixels / all pixels of the usable masks
    instances: bool = False                  # the masks hold instance labels
    mask_kind: str = ""                      # how the kind was decided (Detected.describe)
    groups: str = ""                         # the split's group rule and count (split_data)

    @property
    def kind(self) -> str:
        """What the mask values were read as: instances, classes or binary (mask_kind)."""
        return "instances" if self.instances else "binary" if self.classes.binary else "classes"

    def reading(self) -> list[str]:
        """How the masks are read (their kind and how it was decided; instance labels,
        void) and what the split keeps together."""
        lines = [f"mask values read as {self.mask_kind}"] if self.mask_kind else []
        if self.instances:
            objects = [int(f.detail.split()[0]) for f in self.notes
                       if f.kind == "instance_labels"]
            lines.append(f"{len(objects)} masks hold instance labels (up to "
                         f"{max(objects, default=0)} objects): every nonzero label read as "
                         f"foreground")
        if self.ignore_index is not None:
            lines.append(f"void value {self.ignore_index} found: {self.void_share:.1%} of "
                         f"pixels, left out of loss and metrics"
                         if self.void_share else
                         f"void value {self.ignore_index} declared: found in no mask")
        if self.groups:
            lines.append(self.groups)
        return lines

    @property
    def counts(self) -> dict[str, int]:
        """Findings per kind, plus the pairs kept and the files at fault."""
        counts = Counter(f.kind for f in self.problems + self.notes)
        return {"pairs_ok": len(self.pairs),
                "bad_files": len({f.path for f in self.problems}), **counts}

    def to_dict(self) -> dict:
        return {"counts": self.counts,
                "ignore_index": self.ignore_index, "void_share": self.void_share,
                "instances": self.instances, "mask_kind": self.mask_kind,
                "groups": self.groups, "reading": self.reading(),
                "problems": [{"file": str(f.path), "kind": f.kind, "detail": f.detail}
                             for f in self.problems],
                "notes": [{"file": str(f.path), "kind": f.kind, "detail": f.detail}
                          for f in self.notes]}

    def to_text(self) -> str:
        lines = [f"{len(self.pairs)} usable pair(s); {self.counts['bad_files']} bad file(s)", ""]
        if self.reading():
            lines += ["READING (how the masks are read)"]
            lines += [f"  {line}" for line in self.reading()] + [""]
        lines += ["PROBLEMS (pairs dropped or the step fails, by on_bad_data)"]
        lines += [f"  {f.line()}" for f in self.problems] or ["  none"]
        lines += ["", "NOTES (converted, ignored or counted; not an error)"]
        lines += [f"  {f.line()}" for f in self.notes] or ["  none"]
        lines += ["", "COUNTS"] + [f"  {k}: {v}" for k, v in self.counts.items()]
        return "\n".join(lines) + "\n"

    def hint(self) -> str:
        """What would read the refused masks' values otherwise ("" if none was refused for
        its values): one sentence per kind of refusal."""
        kinds = {f.kind for f in self.problems}
        return "; ".join(f"{PROBLEMS[k]}: {VALUE_HINT[k]}" for k in VALUE_HINT if k in kinds)

    def summary(self, limit: int = 20) -> str:
        """The files at fault, `folder/name (what)`, the first `limit` of them."""
        shown = [f"{f.path.parent.name}/{f.path.name} ({PROBLEMS[f.kind]})"
                 for f in self.problems[:limit]]
        more = len(self.problems) - limit
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
