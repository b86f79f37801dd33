"""Basics shared by every image source: the `Source` record, `DataError` and small checks.

Kept apart so that `idmm.data.sources` (generic sources, `open_source`) and
`idmm.data.layouts` (named on-disk dataset layouts) can both use them without importing each
other. Import these names from `idmm.data.sources`; this module is an implementation detail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class DataError(ValueError):
    """A data problem the user must fix; the message names the path and what to do."""


@dataclass
class Source:
    name: str  # e.g. "fashion-mnist", "flowers102", "folder:/abs/path", "csv:/abs/file.csv"
    split: str  # "train" or "test"
    items: list  # per image: a file path (str), or an int index into `array`
    labels: list[int] | None  # None when unlabelled (flat folder)
    classes: list[str]  # class names, [] when unlabelled
    array: np.ndarray | None = None  # uint8 N x H x W (x C) for in-memory datasets

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, i: int) -> str:
        """Where image i comes from, for error messages."""
        if self.array is not None:
            return f"{self.name}[{self.split}][{self.items[i]}]"
        return str(self.items[i])

    def load(self, i: int) -> Image.Image:
        """Decode image i as 8-bit RGB, upright. Raises whatever PIL raises on a bad file."""
        if self.array is not None:
            pixels = self.array[self.items[i]]
            if pixels.ndim == 3 and pixels.shape[2] == 1:  # PIL has no H x W x 1 mode
                pixels = pixels[..., 0]
            return to_rgb(Image.fromarray(pixels))
        with Image.open(self.items[i]) as image:  # reads the header only
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                # PIL only warns between 1x and 2x its limit; a decoded 2x-limit image would
                # take ~0.5 GB per decoding thread. Refuse before decoding.
                raise Image.DecompressionBombError(
                    f"{image.width}x{image.height} pixels is over the {limit} pixel limit "
                    "(a decompression bomb, or an image far larger than training needs)"
                )
            # Phone photos store pixels sideways plus an EXIF rotation flag; apply it.
            return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB the way an image viewer would show it."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # convert("L") clips at 255 instead of scaling, turning 16-bit images almost white.
        scaled = np.rint(np.asarray(image).astype(np.float32) / 257.0)  # 65535 -> 255
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        # Transparent pixels often hold black or garbage colour; show them on white instead.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _inside(base: str, path: str) -> bool:
    # Lexical check (no symlink resolution): datasets built from symlinks stay usable.
    return os.path.commonpath([base, path]) == base


def _check_files_exist(paths: list[str], listed_in: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = "\n  ".join(missing[:5])
        raise DataError(
            f"{len(missing)} of {len(paths)} images listed in {listed_in} do not exist, e.g.:\n"
            f"  {shown}\nfix the paths or data.root, or remove those entries"
        )
