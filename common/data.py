"""Datasets, found by name through ``DATASETS``: each item is (image_id, image in [-1, 1], (3, R, R)).

Images of any size or aspect are centre-cropped to a square and resized to ``resolution`` (antialiased
bicubic), converted to RGB (grayscale replicated, alpha dropped, 16-bit scaled), and mapped x = 2·u8/255 − 1.

``image`` folders may be checked against a named list of SHA-256 checksums (``id_list``, see
:mod:`common.protocol`). ``measurements`` folders hold measurements y without ground truth: their items are
(image_id, y), ``ground_truth`` is False, and :meth:`MeasurementFolder.state` gives a file's own operator state.
"""
from __future__ import annotations

from pathlib import Path
import warnings
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.protocol import file_sha256, find_list, read_list, verify_files
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


def _image_array(path: Path) -> np.ndarray:
    """The pixels of an image file (uint8 RGB, or uint16 for 16-bit grayscale); ValueError when unreadable."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"image {path} is {img.width}x{img.height}, larger than {MAX_PIXELS} pixels")
            # 16-bit grayscale keeps its depth; everything else (palette, gray, RGBA, CMYK) becomes 8-bit RGB
            array = np.asarray(img).astype(np.uint16) if img.mode.startswith("I;16") else \
                np.asarray(img.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return array


def read_image(path: Path, resolution: int) -> torch.Tensor:
    """One image file -> (3, R, R) in [-1, 1]; a corrupt or huge file raises ValueError naming it."""
    return to_model_range(_image_array(path), resolution)


class ImageDataset:
    """Sequence of (image_id, image) pairs; ``image_id`` is the index in the full sorted listing, and the
    dataset covers ids ``start <= image_id < end``."""

    start: int
    end: int
    resolution: int
    #: False for datasets of measurements y (no ground truth): their items are (image_id, y)
    ground_truth: bool = True

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def ids(self) -> list[int]:
        """The image id of every item, in order."""
        return list(range(self.start, self.end))

    def state(self, index: int) -> dict[str, torch.Tensor] | None:
        """The operator state stored with item ``index`` (measurement files), or None."""
        return None

    def protocol(self) -> dict[str, Any]:
        """What a run records about its data: the dataset, the image names and checksums."""
        return {"dataset": type(self).__name__, "images": dict(zip(map(str, self.ids()), self.names()))}

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
    """The images of a folder, file names sorted, ``start_id <= index < end_id``.

    With ``id_list`` (a list name or path, see :mod:`common.protocol`) the images are the list's files in
    its order, and the selected ones must match their SHA-256 (ValueError otherwise, before any sampling);
    a named list that does not exist is skipped with a warning (nothing is verified).
    """

    def __init__(self, root: str, resolution: int = 256, start_id: int = 0, end_id: int | None = None,
                 id_list: str | None = None, **_bookkeeping: object) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"data.root='{self.root}' is not a folder. Fetch the demo/test images with "
                             f"`bash download.sh data`, or point data.root at a folder of images")
        list_path = find_list(id_list) if id_list else None
        if id_list and list_path is None:
            warnings.warn(f"no checksum list for data.id_list={id_list!r} (looked for {id_list} and "
                          f"configs/data/{id_list}.sha256); the images in '{self.root}' are not verified. "
                          f"Record them with `python -m common.protocol {self.root} > configs/data/{id_list}.sha256`",
                          stacklevel=2)
        entries = read_list(list_path) if list_path else None
        files = [self.root / name for name, _ in entries] if entries else \
            sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"data.root='{self.root}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.start, self.end = _check_range(start_id, end_id, len(files), f"'{self.root}'")
        if entries:
            verify_files(self.root, entries[self.start:self.end])
        self.files, self.resolution = files, resolution
        self.id_list, self.list_path = id_list, list_path

    def protocol(self) -> dict[str, Any]:
        """The image list used (name, file, its own SHA-256, whether verified) and every image's SHA-256."""
        return {"dataset": "image", "root": str(self.root), "id_list": self.id_list,
                "list_file": None if self.list_path is None else str(self.list_path),
                "list_sha256": None if self.list_path is None else file_sha256(self.list_path),
                "verified": self.list_path is not None,
                "images": {str(self.start + i): {"name": p.name, "sha256": file_sha256(p)}
                           for i, p in enumerate(self.files[self.start:self.end])}}

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


MEASUREMENT_SUFFIXES = (".pt", ".npy", *IMAGE_SUFFIXES)


def read_measurement(path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """(y, operator state or None) from a ``.pt`` (a tensor, or {"y", "state"} as a run's measurements/
    files), a ``.npy`` array, or an image (RGB at its own size, mapped to [-1, 1]; 8-bit, so quantised)."""
    if path.suffix == ".pt":
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(payload, torch.Tensor):
            return payload.float(), None
        if isinstance(payload, dict) and isinstance(payload.get("y"), torch.Tensor):
            state = payload.get("state")
            return payload["y"].float(), (dict(state) if state else None)
        raise ValueError(f"{path} holds neither a tensor nor {{'y': tensor, 'state': {{...}}}}")
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32)), None
    array = _image_array(path)
    scale = 65535.0 if array.dtype == np.uint16 else 255.0
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1).contiguous() * 2 - 1, None


@DATASETS.register("measurements")
class MeasurementFolder(ImageDataset):
    """Measurements y without ground truth: the ``.pt``/``.npy``/image files of a folder (see
    :func:`read_measurement`), sorted by name. Image ids are the file stems when all are integers (a run's
    ``measurements/00003.pt`` is image 3, so a rerun draws the same noise), else positions in the listing;
    ``start_id <= id < end_id`` selects. ``resolution`` is the size of the images to reconstruct."""

    ground_truth = False

    def __init__(self, root: str | None, resolution: int = 256, start_id: int = 0, end_id: int | None = None,
                 **_bookkeeping: object) -> None:
        if root is None:
            raise ValueError("data.root is required: the folder of measurement files (e.g. a run's measurements/)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"data.root='{self.root}' is not a folder of measurements "
                             f"({', '.join(MEASUREMENT_SUFFIXES)})")
        files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in MEASUREMENT_SUFFIXES)
        if not files:
            raise ValueError(f"data.root='{self.root}' holds no measurements ({', '.join(MEASUREMENT_SUFFIXES)})")
        numbered = all(p.stem.isdigit() for p in files) and len({int(p.stem) for p in files}) == len(files)
        ids = [int(p.stem) for p in files] if numbered else list(range(len(files)))
        end = max(ids) + 1 if end_id is None else end_id
        chosen = [(i, p) for i, p in zip(ids, files) if start_id <= i < end]
        if not chosen:
            raise ValueError(f"data.start_id={start_id}, data.end_id={end_id} select no measurements from "
                             f"'{self.root}' (ids {ids[0]}..{ids[-1]})")
        self._ids, self.files = [i for i, _ in chosen], [p for _, p in chosen]
        self.start, self.end = self._ids[0], self._ids[-1] + 1
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        """(image_id, y)."""
        return self._ids[index], read_measurement(self.files[index])[0]

    def state(self, index: int) -> dict[str, torch.Tensor] | None:
        """The operator state stored with measurement ``index`` (a run's measurements/ files), or None."""
        return read_measurement(self.files[index])[1]

    def ids(self) -> list[int]:
        return list(self._ids)

    def names(self) -> list[str]:
        return [p.name for p in self.files]

    def protocol(self) -> dict[str, Any]:
        return {"dataset": "measurements", "root": str(self.root), "ground_truth": False,
                "images": {str(i): {"name": p.name, "sha256": file_sha256(p)} for i, p in zip(self._ids, self.files)}}


def build_dataset(name: str, **params: object) -> ImageDataset:
    return DATASETS.build(name, **params)
