"""The data check's report: what it found in a folder (problems that make a file unusable,
notes on files used after a conversion or ignored) and how the masks are read; its text is
the data report split_data logs (unet.validation fills it)."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from unet.classes import Classes
from unet.data import Pair

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

    def reading(self) -> list[str]:
        """How the masks are read, where that is not plain (instance labels, void)."""
        lines = []
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
                "instances": self.instances, "reading": self.reading(),
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

    def summary(self, limit: int = 20) -> str:
        """The files at fault, `folder/name (what)`, the first `limit` of them."""
        shown = [f"{f.path.parent.name}/{f.path.name} ({PROBLEMS[f.kind]})"
                 for f in self.problems[:limit]]
        more = len(self.problems) - limit
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
