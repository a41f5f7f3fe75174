"""Datasets, found by name through ``DATASETS``: each item is (image_id, image in [-1, 1], (3, R, R)).

Images of any size or aspect are centre-cropped to a square and resized to ``resolution`` (antialiased
bicubic), converted to RGB (grayscale replicated, alpha dropped, 16-bit scaled), and mapped x = 2·u8/255 − 1.

``image`` folders may be checked against a named list of SHA-256 checksums (``id_list``, see
:mod:`common.data.id_lists`). ``measurements`` folders hold measurements y without ground truth: their items are
(image_id, y), ``ground_truth`` is False, and :meth:`MeasurementFolder.state` gives a file's own operator state.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.config.keys import build_strict
from common.data.files import load_tensor_file, regular_file_problem, tensor_problem
from common.data.id_lists import file_sha256, find_list, read_list, verify_files
from common.data.operator_state import state_data_problems
from common.errors import ConfigError, InputError
from common.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: images with more pixels are refused (decompression bombs, and sizes no diffusion model here works at)
MAX_PIXELS = 8192 ** 2

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


def _open_image(path: Path) -> Image.Image:
    """``Image.open`` (header only) with the size limit :data:`MAX_PIXELS`; ValueError saying what is wrong.

    PIL's own decompression-bomb guard (a warning above ``Image.MAX_IMAGE_PIXELS``, an error above twice that) is
    turned into the same refusal, so the limit is ours and no global PIL setting is changed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ConfigError(f"too large (a decompression bomb?): {err}; the limit is {MAX_PIXELS} pixels") from err
    except PermissionError as err:
        raise ConfigError("unreadable (permission denied)") from err
    except OSError as err:  # PIL.UnidentifiedImageError is an OSError
        raise ConfigError(f"not an image PIL can read ({err})") from err
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ConfigError(f"too large: {img.width}x{img.height} pixels, more than the limit of {MAX_PIXELS} "
                         f"({int(MAX_PIXELS ** 0.5)}x{int(MAX_PIXELS ** 0.5)})")
    return img


def image_file_problem(path: Path) -> str | None:
    """Why ``path`` is no usable image (not a regular file, empty, unreadable, not an image, too large, corrupt or
    truncated), or None. Runs PIL's ``verify`` (chunk checksums), then decodes the pixels once: formats whose
    ``verify`` checks little (JPEG) are caught truncated here and not in the middle of a run."""
    problem = regular_file_problem(path)
    if problem:
        return problem
    try:
        with _open_image(path) as img:
            img.verify()
        with _open_image(path) as img:  # verify() leaves the image unusable: open it again to decode
            _pixels(img)
    except ValueError as err:
        return str(err)
    except Exception as err:  # verify() raises whatever the format plugin meets (SyntaxError, struct.error, ...)
        return f"corrupt ({type(err).__name__}: {err})"
    return None


def check_image_files(files: Sequence[Path], where: str) -> None:
    """Every file must be a usable image (:func:`image_file_problem`); else one ValueError naming them all."""
    problems = [f"{path.name}: {problem}" for path in files if (problem := image_file_problem(path))]
    if problems:
        raise ConfigError(f"{where}: {len(problems)} of {len(files)} image files cannot be used (nothing was "
                         f"sampled):\n  " + "\n  ".join(problems)
                         + "\nRemove or replace them, or select other images with data.start_id/data.end_id")


def _pixels(img: Image.Image) -> np.ndarray:
    """The pixels of an open image by its real value range: 16-bit grayscale keeps its depth (uint16), a 32-bit float
    image in [0, 1] stays float; palette, gray, RGBA, CMYK become 8-bit RGB. ValueError for what has no known range:
    32-bit integers, floats outside [0, 1] or not finite."""
    if img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("a float image holding NaN or infinite values")
        if array.size and not (array.min() >= 0.0 and array.max() <= 1.0):
            raise ValueError(f"a float image with values in [{array.min():g}, {array.max():g}]: float images are "
                             f"read as intensities in [0, 1]; save it as 8/16-bit or scale it to [0, 1]")
        return array
    if img.mode in ("I", "I;32", "I;32S"):
        raise ValueError("a 32-bit integer image: its value range is unknown; save it as an 8 or 16-bit image "
                         "(or as floats in [0, 1])")
    return np.asarray(img.convert("RGB"))


def _image_array(path: Path) -> np.ndarray:
    """The pixels of an image file (:func:`_pixels`); ConfigError (a ValueError) when unreadable or refused."""
    problem = regular_file_problem(path)
    if problem:
        raise ConfigError(f"cannot read image {path}: {problem}")
    try:
        with _open_image(path) as img:
            return _pixels(img)
    except (ValueError, OSError) as err:
        raise ConfigError(f"cannot read image {path}: {err}") from err


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


def folder_setting(root: Any, what: str) -> Path:
    """``data.root`` as a path; ConfigError unless it is a non-empty string (the folder is checked by the caller)."""
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"data.root={root!r} is not valid: need the path of {what}")
    return Path(root).expanduser()


def _check_range(start_id: int, end_id: int | None, total: int, where: str) -> tuple[int, int]:
    end = total if end_id is None else end_id
    if not 0 <= start_id < end <= total:
        raise ConfigError(f"data.start_id={start_id}, data.end_id={end_id} select no images from {where} "
                         f"({total} images): need 0 <= start_id < end_id <= {total}")
    return start_id, end


@DATASETS.register("image")
class ImageFolder(ImageDataset):
    """The images of a folder, file names sorted, ``start_id <= index < end_id``.

    With ``id_list`` (a list name or path, see :mod:`common.data.id_lists`) the images are the list's files in
    its order, and the selected ones must match their SHA-256 (ValueError otherwise, before any sampling);
    a named list that does not exist is skipped with a warning (nothing is verified).
    """

    def __init__(self, root: str, resolution: int = 256, start_id: int = 0, end_id: int | None = None,
                 id_list: str | None = None) -> None:
        self.root = folder_setting(root, "a folder of images")
        if id_list is not None and (not isinstance(id_list, str) or not id_list):
            raise ConfigError(f"data.id_list={id_list!r} is not valid: need the name or path of a checksum list, or "
                              f"null")
        if not self.root.is_dir():
            raise ConfigError(f"data.root='{self.root}' is not a folder. Fetch the demo/test images with "
                             f"`bash download.sh data`, or point data.root at a folder of images")
        list_path = find_list(id_list) if id_list else None
        if id_list and list_path is None:
            warnings.warn(f"no checksum list for data.id_list={id_list!r} (looked for {id_list} and "
                          f"configs/data/{id_list}.sha256); the images in '{self.root}' are not verified. "
                          f"Record them with `python -m commands.protocol {self.root} > configs/data/{id_list}.sha256`",
                          stacklevel=2)
        entries = read_list(list_path) if list_path else None
        files = [self.root / name for name, _ in entries] if entries else \
            sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"data.root='{self.root}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.start, self.end = _check_range(start_id, end_id, len(files), f"'{self.root}'")
        if entries:  # first, as a changed file is better named by its checksum (only regular files are read)
            verify_files(self.root, entries[self.start:self.end])
        check_image_files(files[self.start:self.end], f"data.root='{self.root}'")
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
                 start_id: int = 0, end_id: int | None = None) -> None:
        import skimage.data
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or not images:
            raise ConfigError(f"data.images={images!r} is not valid: need a list of one or more of "
                              f"{', '.join(SKIMAGE_DEMO)}")
        unknown = [n for n in images if n not in SKIMAGE_DEMO]
        if unknown:
            raise ConfigError(f"data.images has unknown entries {unknown}; valid: {', '.join(SKIMAGE_DEMO)}")
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


def _read_npy(path: Path) -> torch.Tensor:
    """A ``.npy`` array of real numbers (``allow_pickle=False``: object arrays are refused, never unpickled)."""
    try:  # the header first: a claimed shape beyond any measurement is refused before anything is allocated
        with open(path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = read(handle)[0]
    except (ValueError, OSError, EOFError):
        raise InputError(f"{path}: not a complete .npy file (truncated or damaged)") from None
    if math.prod(shape) > MAX_MEASUREMENT_VALUES:
        raise InputError(f"{path}: its header claims an array of shape {shape} ({math.prod(shape)} values); a "
                         f"measurement holds at most {MAX_MEASUREMENT_VALUES}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(f"{path}: an object array (Python objects are never loaded); save numbers") from None
        raise InputError(f"{path}: not a complete .npy file (truncated or damaged)") from None
    except (OSError, EOFError):
        raise InputError(f"{path}: not a complete .npy file (truncated or damaged)") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise InputError(f"{path}: an array of dtype {getattr(array, 'dtype', type(array).__name__)}, not real "
                         f"numbers")
    return torch.from_numpy(array.astype(np.float32))


def _measurement_payload(payload: Any, path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """(y, state or None) from a ``.pt`` payload: a tensor, or {"y": tensor, "state": {name: tensor}}."""
    expected = "a tensor y, or {'y': tensor, 'state': {name: tensor}} (a run's measurements/ files)"
    if isinstance(payload, torch.Tensor):
        y, state = payload, None
    elif isinstance(payload, dict):
        unknown = sorted(map(repr, set(payload) - {"y", "state"}))
        if unknown or not isinstance(payload.get("y"), torch.Tensor):
            what = f"unknown keys {', '.join(unknown)}" if unknown else "no tensor under 'y'"
            raise InputError(f"{path}: {what}; a measurement file holds {expected}")
        y, state = payload["y"], payload.get("state")
        if state is not None and not isinstance(state, dict):
            raise InputError(f"{path}: 'state' is a {type(state).__name__}; a measurement file holds {expected}")
        problems = state_data_problems(state or {})
        if problems:
            raise InputError(f"{path}: no usable operator state: {'; '.join(problems)}")
    else:
        raise InputError(f"{path}: holds a {type(payload).__name__}; a measurement file holds {expected}")
    return _checked_y(y, path), (dict(state) if state else None)


#: the largest magnitude a measurement value may have: y is A(x) + n for images in [-1, 1] (Fourier magnitudes of a
#: 4096² image stay far below); beyond it a file holds no measurement of these images
MAX_MEASUREMENT = 1e8
#: the most values one measurement file may hold (4 × a 3 × 4096² image: phase retrieval's oversampled y fits)
MAX_MEASUREMENT_VALUES = 4 * 3 * 4096 ** 2


def _checked_y(y: torch.Tensor, path: Path) -> torch.Tensor:
    """``y`` as float32 when it is a usable measurement: dense real numbers (not booleans), finite, at most
    :data:`MAX_MEASUREMENT` in magnitude; else :class:`InputError` naming the file and the reason."""
    problem = tensor_problem(y)
    if problem:
        raise InputError(f"{path}: y {problem if problem.startswith('holds') else 'is ' + problem}")
    if y.dtype == torch.bool:
        raise InputError(f"{path}: y is a boolean tensor, not measured values")
    largest = float(y.abs().max()) if y.numel() else 0.0
    if largest > MAX_MEASUREMENT:
        raise InputError(f"{path}: y has values up to {largest:g}; a measurement of images in [-1, 1] stays within "
                         f"{MAX_MEASUREMENT:g}")
    return y.float()


def read_measurement(path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """(y, operator state or None) from a ``.pt`` (a tensor, or {"y", "state"} as a run's measurements/
    files), a ``.npy`` array, or an image (RGB at its own size, mapped to [-1, 1]; 8-bit, so quantised).
    A file that is no usable measurement raises :class:`~common.errors.InputError` (a ValueError) naming it
    and what is wrong; pickled objects are never loaded."""
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return _measurement_payload(load_tensor_file(path), path)
    if suffix == ".npy":
        problem = regular_file_problem(path)
        if problem:
            raise InputError(f"{path}: {problem}")
        return _checked_y(_read_npy(path), path), None
    try:
        array = _image_array(path)
    except ValueError as err:
        raise InputError(str(err)) from None
    scale = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}.get(array.dtype, 1.0)
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

    def __init__(self, root: str | None, resolution: int = 256, start_id: int = 0, end_id: int | None = None) -> None:
        if root is None:
            raise ConfigError("data.root is required: the folder of measurement files (e.g. a run's measurements/)")
        self.root = folder_setting(root, "a folder of measurement files")
        if not self.root.is_dir():
            raise ConfigError(f"data.root='{self.root}' is not a folder of measurements "
                             f"({', '.join(MEASUREMENT_SUFFIXES)})")
        files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in MEASUREMENT_SUFFIXES)
        if not files:
            raise ConfigError(f"data.root='{self.root}' holds no measurements ({', '.join(MEASUREMENT_SUFFIXES)})")
        numbered = all(p.stem.isdigit() for p in files) and len({int(p.stem) for p in files}) == len(files)
        ids = [int(p.stem) for p in files] if numbered else list(range(len(files)))
        end = max(ids) + 1 if end_id is None else end_id
        chosen = [(i, p) for i, p in zip(ids, files) if start_id <= i < end]
        if not chosen:
            raise ConfigError(f"data.start_id={start_id}, data.end_id={end_id} select no measurements from "
                             f"'{self.root}' (ids {ids[0]}..{ids[-1]})")
        self._ids, self.files = [i for i, _ in chosen], [p for _, p in chosen]
        problems = []
        for path in self.files:  # every file is read once here, before any sampling: all problems at once
            try:
                read_measurement(path)
            except InputError as err:
                problems.append(str(err))
        if problems:
            raise InputError(f"data.root='{self.root}': {len(problems)} of {len(self.files)} measurement files "
                             f"cannot be used (nothing was sampled):\n  " + "\n  ".join(problems))
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
    """The dataset registered as ``name`` from a data config's remaining keys (strict, like :func:`build_model`)."""
    return build_strict(DATASETS.get(name), params, "data")
