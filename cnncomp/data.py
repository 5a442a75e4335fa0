"""What `cnncomp run` and `cnncomp eval` read and write: input arrays and images, labelled sets, label files,
output arrays and class-map pictures, and the lecture's top-k error.

Images are prepared as the model's preprocessing says (the artifact's manifest carries it):

    x = (pixel / 255 - mean[c]) / std[c]      per channel, after resizing to the model's input size

A model whose only input is N x 1 x H x W or N x 3 x H x W takes images: grayscale or RGB. Unless told
otherwise, 3-channel models use ImageNet's mean and std (the convention of the lecture's ImageNet networks) and
1-channel models take pixels scaled to [0, 1] (mean 0, std 1), as the shipped LeNet was trained.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pillow's modes by the number of colour channels they carry (an alpha band is not a channel of the picture).
_MODE_CHANNELS = {"1": 1, "L": 1, "LA": 1, "I": 1, "I;16": 1, "F": 1, "P": 3, "PA": 3, "RGB": 3, "RGBA": 3,
                  "RGBX": 3, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}
# Class-map colours: Pascal VOC's palette (bit-interleaved class index), so neighbouring classes differ.
_PALETTE_SIZE = 256


class DataError(CnnCompError):
    """An input, data set or label file that cannot be read or does not fit the model."""


# ----- preprocessing -------------------------------------------------------------------------------------------
def default_preprocessing(graph: Graph) -> dict[str, Any] | None:
    """How images become this model's input, or None if the model does not take images (see the module doc)."""
    if len(graph.inputs) != 1:
        return None
    shape = graph.inputs[0].shape
    if len(shape) != 4 or shape[1] not in (1, 3):
        return None
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if shape[1] == 3 else ((0.0,), (1.0,))
    return {"channels": shape[1], "size": [shape[2], shape[3]], "mean": list(mean), "std": list(std)}


def with_normalization(preprocessing: dict[str, Any] | None, mean: Sequence[float] | None,
                       std: Sequence[float] | None) -> dict[str, Any] | None:
    """`preprocessing` with another mean and std (one value per channel, or one for all)."""
    if mean is None and std is None:
        return preprocessing
    if preprocessing is None:
        raise DataError("--mean/--std apply to models that take images (one input of 1 or 3 channels)")
    result = dict(preprocessing)
    channels = preprocessing["channels"]
    for key, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = list(values) * channels if len(values) == 1 else list(values)
        if len(values) != channels:
            raise DataError(f"--{key}: {len(values)} values for a {channels}-channel model")
        if key == "std" and any(v <= 0 for v in values):
            raise DataError("--std: every value must be positive")
        result[key] = [float(v) for v in values]
    return result


def load_image(path: str | Path, preprocessing: Mapping[str, Any] | None, model_name: str,
               content: bytes | None = None) -> np.ndarray:
    """A PNG or JPEG (the file at `path`, or its `content` read already) as a 1 x C x H x W float32 batch: the
    shorter side resized to fit, the centre cropped to the model's size (no distortion), normalized per channel."""
    path = Path(path)
    if preprocessing is None:
        raise DataError(f"{path}: model {model_name!r} does not take images (its input is not 1 or 3 channels "
                        "of N x C x H x W); give a .npy or .npz")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path if content is None else io.BytesIO(content)) as image:
            image.load()
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a PNG or JPEG image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors on a truncated or damaged file
        raise DataError(f"{path}: cannot read image: {_first_line(exc)}") from None
    channels = preprocessing["channels"]
    found = _MODE_CHANNELS.get(image.mode)
    if found != channels:
        kind = {1: "grayscale", 3: "RGB"}[channels]
        raise DataError(f"{path}: a {found or '?'}-channel image (mode {image.mode}), but model {model_name!r} takes "
                        f"{channels}-channel ({kind}) images")
    image = image.convert("L" if channels == 1 else "RGB")
    height, width = preprocessing["size"]
    scale = max(height / image.height, width / image.width)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BILINEAR)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels).transpose(2, 0, 1) / 255.0
    mean = np.asarray(preprocessing["mean"], np.float32)[:, None, None]
    std = np.asarray(preprocessing["std"], np.float32)[:, None, None]
    return np.ascontiguousarray(((pixels - mean) / std)[None], dtype=np.float32)


# ----- reading inputs ------------------------------------------------------------------------------------------
def read_inputs(path: str | Path, input_names: Sequence[str], preprocessing: Mapping[str, Any] | None,
                model_name: str, content: bytes | None = None) -> dict[str, np.ndarray]:
    """The model's inputs from a `.npy` (one input), a `.npz` (arrays named like the inputs; one unnamed array
    for a one-input model) or an image: the file at `path`, or its `content` read already (a worker of a
    cluster reads what the client sent; `path` then only names it)."""
    path = Path(path)
    if content is None and not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if len(input_names) != 1:
            raise DataError(f"{path}: model {model_name!r} has {len(input_names)} inputs; give a .npz")
        return {input_names[0]: load_image(path, preprocessing, model_name, content)}
    if suffix == ".npy":
        if len(input_names) != 1:
            raise DataError(f"{path}: model {model_name!r} has inputs {', '.join(input_names)}; give a .npz "
                            "with an array for each")
        return {input_names[0]: _load_npy(path, content)}
    if suffix == ".npz":
        arrays = read_npz(path, content)
        if len(input_names) == 1 and len(arrays) == 1:
            ((key, value),) = arrays.items()
            # np.savez names unnamed arrays arr_0; a name of its own must be the input's.
            if key not in (input_names[0], "arr_0"):
                raise DataError(f"{path}: its array is named {key!r}, but model {model_name!r} takes "
                                f"{input_names[0]!r}; name it so (or leave it unnamed)")
            return {input_names[0]: value}
        missing = [name for name in input_names if name not in arrays]
        if missing:
            raise DataError(f"{path}: no array named {missing[0]!r} (the model's inputs: {', '.join(input_names)}; "
                            f"the file has: {', '.join(arrays) or 'nothing'})")
        return {name: arrays[name] for name in input_names}
    raise DataError(f"{path}: unknown input format {path.suffix or '(no suffix)'!r}; expected .npy, .npz, "
                    f"{', '.join(IMAGE_SUFFIXES)}")


INPUT_SUFFIXES = (".npy", ".npz", *IMAGE_SUFFIXES)
_GLOB_CHARACTERS = set("*?[")


def list_inputs(specs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """The input files `specs` name, in order: a file as given; a folder's images and arrays in sorted order
    (its subfolders too with `recursive`); a glob pattern's matches, sorted. Each file once, where it first
    appears. A spec that names nothing is an error."""
    files: dict[Path, None] = {}
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern) if p.suffix.lower() in INPUT_SUFFIXES and p.is_file())
            if not found:
                subfolders = "" if recursive or not any(p.is_dir() for p in path.iterdir()) else \
                    " (it has subfolders: add --recursive)"
                raise DataError(f"{path}: no {', '.join(INPUT_SUFFIXES)} files in this folder{subfolders}")
        elif _GLOB_CHARACTERS & set(text):
            import glob

            found = sorted(Path(match) for match in glob.glob(text, recursive=recursive) if Path(match).is_file())
            if not found:
                raise DataError(f"{text}: no file matches this pattern")
        elif path.is_file():
            found = [path]
        else:
            raise DataError(f"{path}: no such file or folder")
        files.update(dict.fromkeys(found))
    return list(files)


def read_sample(name: str, input_shapes: Mapping[str, Sequence[int]], preprocessing: Mapping[str, Any] | None,
                model_name: str, content: bytes | None = None) -> dict[str, np.ndarray]:
    """One sample for the model from an input file (see `read_inputs`): each input a 1 x ... float32 array of the
    compiled shape but for the batch. An array may leave the batch axis out."""
    arrays = read_inputs(name, list(input_shapes), preprocessing, model_name, content)
    return {input_name: one_sample(f"{name}: input {input_name!r}", arrays[input_name], shape)
            for input_name, shape in input_shapes.items()}


def one_sample(what: str, value: Any, shape: Sequence[int]) -> np.ndarray:
    """`value` as a 1 x shape[1:] float32 array (it may lack the batch axis), or a DataError naming `what`."""
    sample_shape = tuple(shape[1:])
    value = np.asarray(value)
    if value.shape == sample_shape:
        value = value[None]
    if value.shape != (1, *sample_shape):
        got = "x".join(map(str, value.shape)) or "a scalar"
        raise DataError(f"{what}: an array of shape {got}, expected one sample of "
                        f"{'x'.join(map(str, sample_shape))} (or 1x{'x'.join(map(str, sample_shape))})")
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise DataError(f"{what}: {value.dtype} values, expected numbers")
    return np.ascontiguousarray(value, dtype=np.float32)


def read_image_folder(path: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """A labelled set as a folder of class subfolders (`DIR/<class>/<image>`, the ImageFolder convention):
    the images in sorted order, their labels (a class's index among the sorted subfolder names) and the class
    names."""
    path = Path(path)
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path}: no class subfolders; a labelled folder holds DIR/<class>/<image>")
    files, labels = [], []
    for index, name in enumerate(classes):
        images = sorted(p for p in (path / name).rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        files += images
        labels += [index] * len(images)
    if not files:
        raise DataError(f"{path}: its class subfolders hold no {', '.join(INPUT_SUFFIXES)} files")
    return files, np.asarray(labels, dtype=np.int64), classes


def _load_npy(path: Path, content: bytes | None = None) -> np.ndarray:
    try:
        return np.load(path if content is None else io.BytesIO(content), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read array: {_first_line(exc)}") from None


def read_npz(path: str | Path, content: bytes | None = None) -> dict[str, np.ndarray]:
    """Every array of an `.npz` (the file, or its `content`; pickled objects refused)."""
    try:
        archive = np.load(path if content is None else io.BytesIO(content), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single array (.npy), not an .npz archive of arrays")
        with archive:
            return {key: archive[key] for key in archive.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read arrays: {_first_line(exc)}") from None
    except Exception as exc:  # zipfile's errors on a damaged archive
        raise DataError(f"{path}: cannot read arrays: {type(exc).__name__}: {_first_line(exc)}") from None


def read_labelled_set(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A labelled set: an `.npz` with `x` (N x ... float32 inputs) and `y` (N integer class labels)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    arrays = read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: a labelled set needs arrays 'x' (inputs) and 'y' (labels); it has "
                        f"{', '.join(arrays) or 'nothing'}")
    x, y = arrays["x"], arrays["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must be a vector of integer labels, got {y.dtype} of shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{path}: the set is empty")
    return x, y


def read_labels(path: str | Path) -> list[str]:
    """Class names, one a line (line k names class k)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read labels: {_first_line(exc)}") from None


# ----- scores --------------------------------------------------------------------------------------------------
def softmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = scores - scores.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest classes of each row, best first (ties: the lower class index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def top_k_errors(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> dict[int, int]:
    """The lecture's top-k error, counted: samples whose label is not among their k highest-scoring classes."""
    best = top_k(scores, max(ks))
    return {k: int((best[:, :k] != labels[:, None]).all(axis=1).sum()) for k in ks}


def is_classifier_output(shape: Sequence[int]) -> bool:
    """N x classes, or N x classes x 1 x 1."""
    return len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))


def is_map_output(shape: Sequence[int]) -> bool:
    """N x C x H x W with a picture in it (FCN's and U-Net's class scores, an image filter's result)."""
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def class_map_png(scores: np.ndarray) -> bytes:
    """A palette PNG of one image's per-pixel class (argmax over C x H x W scores), or, for a one-channel map, the
    values scaled to 0-255 in grayscale."""
    from PIL import Image

    if scores.shape[0] == 1:
        plane = scores[0]
        low, high = float(plane.min()), float(plane.max())
        scaled = np.zeros_like(plane) if high == low else (plane - low) / (high - low) * 255
        image = Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(scores.argmax(axis=0).astype(np.uint8), mode="P")
        image.putpalette(_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _palette() -> list[int]:
    colours = []
    for index in range(_PALETTE_SIZE):
        rgb, c = [0, 0, 0], index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        colours.extend(rgb)
    return colours


# ----- writing -------------------------------------------------------------------------------------------------
def array_bytes(outputs: Mapping[str, np.ndarray], suffix: str) -> bytes:
    """`.npy` of the one output, or `.npz` of every output by name."""
    buffer = io.BytesIO()
    if suffix == ".npy":
        (value,) = outputs.values()
        np.save(buffer, value)
    else:
        np.savez(buffer, **outputs)
    return buffer.getvalue()


def check_writable(path: str | Path) -> Path:
    """Fail now, before the work, if `path` cannot be written (its folder missing or read-only)."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise DataError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise DataError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"cannot write {path}: folder {folder} is not writable")
    return path


def write_atomically(files: Mapping[Path, bytes | Callable[[Path], None]]) -> None:
    """Write each file beside its target and rename it into place only when all were written: a failure leaves
    no file, whole or partial. A value is the file's bytes, or a function that writes the temporary path."""
    temporaries: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            check_writable(path)
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temporary = Path(name)
            temporaries.append((temporary, path))
            with os.fdopen(handle, "wb") as file:
                if isinstance(content, bytes):
                    file.write(content)
            if not isinstance(content, bytes):
                content(temporary)
            os.chmod(temporary, _new_file_mode())  # mkstemp's 0600 would hide the file from others
        for temporary, path in temporaries:
            os.replace(temporary, path)
    except OSError as exc:
        raise DataError(f"cannot write {temporaries[-1][1] if temporaries else ''}: {exc.strerror or exc}") from None
    finally:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
