"""Image datasets, found by name through ``DATASETS``: each item is (image_id, image in [-1, 1], (3, R, R)).

Images of any size or aspect are centre-cropped to a square and resized to ``resolution`` (antialiased
bicubic), converted to RGB (grayscale replicated, alpha dropped, 16-bit scaled), and mapped x = 2·u8/255 − 1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64_000_000  # refuse decompression bombs

#: natural RGB images bundled with scikit-image (the offline demo set; no download)
SKIMAGE_DEMO = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def to_model_range(array: np.ndarray, resolution: int) -> torch.Tensor:
    """HxW[xC] uint8/uint16/float array -> (3, R, R) float32 in [-1, 1] (centre crop, resize)."""
    if array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    image = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1)
    h, w = image.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[:, top:top + side, left:left + side]
    if side != resolution:
        image = F.interpolate(image[None], size=(resolution, resolution), mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
    return image * 2 - 1


def read_image(path: Path, resolution: int) -> torch.Tensor:
    """One image file -> (3, R, R) in [-1, 1]; a corrupt or huge file raises ValueError naming it."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"image {path} is {img.width}x{img.height}, larger than {MAX_PIXELS} pixels")
            # 16-bit grayscale keeps its depth; everything else (palette, gray, RGBA, CMYK) becomes 8-bit RGB
            array = np.asarray(img).astype(np.uint16) if img.mode.startswith("I;16") else \
                np.asarray(img.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return to_model_range(array, resolution)


class ImageDataset:
    """Sequence of (image_id, image) pairs; ``image_id`` is the index in the full sorted listing, and the
    dataset covers ids ``start <= image_id < end``."""

    start: int
    end: int

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return (self[i] for i in range(len(self)))


def _check_range(start_id: int, end_id: int | None, total: int, where: str) -> tuple[int, int]:
    end = total if end_id is None else end_id
    if not 0 <= start_id < end <= total:
        raise ValueError(f"data.start_id={start_id}, data.end_id={end_id} select no images from {where} "
                         f"({total} images): need 0 <= start_id < end_id <= {total}")
    return start_id, end


@DATASETS.register("image")
class ImageFolder(ImageDataset):
    """The images of a folder, file names sorted, ``start_id <= index < end_id``."""

    def __init__(self, root: str, resolution: int = 256, start_id: int = 0, end_id: int | None = None,
                 **_bookkeeping: object) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"data.root='{self.root}' is not a folder. Fetch the demo/test images with "
                             f"`bash download.sh data`, or point data.root at a folder of images")
        files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"data.root='{self.root}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.start, self.end = _check_range(start_id, end_id, len(files), f"'{self.root}'")
        self.files, self.resolution = files, resolution

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        image_id = self.start + index
        return image_id, read_image(self.files[image_id], self.resolution)

    def names(self) -> list[str]:
        return [p.name for p in self.files[self.start:self.end]]


@DATASETS.register("skimage")
class SkimageDemo(ImageDataset):
    """Natural RGB images that ship with scikit-image (astronaut, coffee, chelsea, ...): the offline demo."""

    def __init__(self, images: list[str] | tuple[str, ...] = SKIMAGE_DEMO, resolution: int = 64,
                 start_id: int = 0, end_id: int | None = None, **_bookkeeping: object) -> None:
        import skimage.data
        unknown = [n for n in images if n not in SKIMAGE_DEMO]
        if unknown:
            raise ValueError(f"data.images has unknown entries {unknown}; valid: {', '.join(SKIMAGE_DEMO)}")
        self._load = lambda name: getattr(skimage.data, name)()
        self.images = list(images)
        self.start, self.end = _check_range(start_id, end_id, len(self.images), "the scikit-image demo set")
        self.resolution = resolution

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        image_id = self.start + index
        return image_id, to_model_range(self._load(self.images[image_id]), self.resolution)

    def names(self) -> list[str]:
        return self.images[self.start:self.end]


def build_dataset(name: str, **params: object) -> ImageDataset:
    return DATASETS.build(name, **params)
