"""A persistent on-disk cache of resized (image, mask) arrays, shared by every run.

Decoding a 1918x1280 Carvana JPEG and its GIF mask costs tens of milliseconds; the resized
arrays at 160x240 are ~150 KB. The first run at a given size decodes each pair once and stores
the arrays; later runs (and their first epoch) read them back instead of decoding.

The key is a digest of both files' *contents* plus the target size, so an entry is never wrong:
an edited file or another size is a miss, and the same bytes anywhere (the built-in set is
downloaded to a new temporary folder by every run) are a hit. Hashing a file is ~100x cheaper
than decoding it. Entries are written to a temporary file and renamed into place, so a crash or
a concurrent run never leaves a half-written entry behind.
"""
from __future__ import annotations

import hashlib
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from unet.atomic import write_atomically

FORMAT = 1   # bump when what an entry holds changes (e.g. another resize interpolation)

# np.load parses each array's header with ast.literal_eval, and CPython 3.11 corrupts its AST
# recursion counter when two threads do that at once ("SystemError: AST constructor recursion
# depth mismatch", python/cpython#106905). Preload reads entries from a thread pool, so reads
# take turns; an entry is ~150 KB of uncompressed bytes, so the lock costs next to nothing.
_READ_LOCK = threading.Lock()


class ArrayCache:
    """Resized pairs on disk under `directory`, one `<digest>.npz` per (pair, size)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()
        self.hits = self.misses = 0
        self.rebuilt: list[Path] = []     # entries that existed but could not be read

    def key(self, image: Path, mask: Path, size: tuple[int, int], labels: str = "binary") -> str:
        """Hex digest of the image's and the mask's bytes, the target size, how the mask is
        read (`labels`) and FORMAT."""
        variant = "" if labels == "binary" else f" {labels}"    # binary keys as before
        h = hashlib.blake2b(f"v{FORMAT} {size[0]}x{size[1]}{variant}".encode(), digest_size=20)
        for path in (image, mask):
            data = Path(path).read_bytes()
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get_or_compute(self, image: Path, mask: Path, size: tuple[int, int],
                       compute: Callable[[], tuple[np.ndarray, np.ndarray]],
                       labels: str = "binary") -> tuple[np.ndarray, np.ndarray]:
        """The cached ((H, W, 3) uint8, (H, W) uint8) arrays of the pair at `size`, else
        compute() stored under the pair's key. An unreadable entry counts as a miss."""
        path = self.path(self.key(image, mask, size, labels))
        try:
            with _READ_LOCK, np.load(path) as entry:
                arrays = entry["image"], entry["mask"]
            self.hits += 1
            return arrays
        except FileNotFoundError:
            pass
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            # Truncated or foreign (a crash of another writer, a damaged disk): made again.
            self.rebuilt.append(path)
        self.misses += 1
        arrays = compute()
        self._write(path, *arrays)
        return arrays

    def _write(self, path: Path, image: np.ndarray, mask: np.ndarray) -> None:
        write_atomically(path, lambda f: np.savez(f, image=image, mask=mask))
