"""Tensor features: a column whose every row is a fixed-shape array (an Arrow fixed-size list
or ``fixed_shape_tensor``, or a list column whose rows all have one length), and folders of
images, one subfolder per class.

The training loop, the export and the served model see a tensor row flattened (C*H*W
float32 values, named ``image[0]``, ``image[1]``, ...), so the split's hash, the statistics,
the in-memory and streamed paths and ONNX work on it unchanged; ``DataInfo.input_shape``
keeps the shape, which models read (``DataShape.input_shape``: the zoo's ``cnn`` views its
input as that image) and Serve's V2 endpoints take (``[rows, C, H, W]``). Images are
standardised per channel (``per_channel``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import DataError

IMAGE_COLUMN = "image"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def is_tensor(kind: pa.DataType) -> bool:
    """A column of arrays of numbers: fixed-shape tensor, fixed-size list or list."""
    if isinstance(kind, pa.FixedShapeTensorType):
        return _numeric(kind.value_type)
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _numeric(kind.value_type)
    return False


def declared_shape(kind: pa.DataType) -> list[int] | None:
    """The row shape the column's type states (None for a list of any length)."""
    if isinstance(kind, pa.FixedShapeTensorType):
        return list(kind.shape)
    if pa.types.is_fixed_size_list(kind):
        return [kind.list_size]
    return None


def flat_names(column: str, shape: list[int]) -> list[str]:
    return [f"{column}[{i}]" for i in range(math.prod(shape))]


def flat_values(column: pa.ChunkedArray, name: str, width: int) -> np.ndarray:
    """The column as a (rows, width) float32 matrix.

    Raises:
        DataError: a missing row, or a row of another length than ``width`` (naming it).
    """
    if isinstance(column.type, pa.FixedShapeTensorType):
        column = pa.chunked_array([c.storage for c in column.chunks], column.type.storage_type)
    if column.null_count:
        raise DataError("data.features", f"missing rows in tensor column {name!r}; drop them")
    lengths = pc.list_value_length(column).to_numpy()
    wrong = np.flatnonzero(lengths != width)
    if wrong.size:
        row = int(wrong[0])
        raise DataError(
            "data.features",
            f"row {row} of tensor column {name!r} has {int(lengths[row])} values, not "
            f"{width} like the shape data.input_shape gives; every row must have one shape",
        )
    values = pc.list_flatten(column)
    if pa.types.is_boolean(values.type):
        values = values.cast(pa.uint8())
    if values.null_count:
        raise DataError("data.features", f"missing values in tensor column {name!r}; fill them")
    flat = values.to_numpy().astype(np.float32, copy=False)
    return flat.reshape(len(column), width)


def per_channel(mean: list[float], std: list[float], shape: list[int]) -> tuple[list, list]:
    """Per-element moments pooled per channel (the first axis of an image's [C, H, W]),
    then spread back over each channel's elements. Exact: every element has the same count,
    so a channel's variance is the mean of its elements' (var + mean^2) minus its mean^2."""
    channels = shape[0]
    m = np.asarray(mean, dtype=np.float64).reshape(channels, -1)
    v = np.asarray(std, dtype=np.float64).reshape(channels, -1) ** 2
    channel_mean = m.mean(axis=1)
    channel_var = (v + m**2).mean(axis=1) - channel_mean**2
    channel_std = np.sqrt(np.maximum(channel_var, 0.0))
    channel_std[channel_std == 0] = 1.0
    each = m.shape[1]
    return np.repeat(channel_mean, each).tolist(), np.repeat(channel_std, each).tolist()


# --------------------------------------------------------------------------- image folders


def image_classes(folder: Path) -> list[Path]:
    """The class subfolders of an image folder, sorted by name.

    Raises:
        DataError: not a folder, or no subfolder holds an image.
    """
    if not folder.is_dir():
        raise DataError(
            "data.source",
            f"{folder} is not a folder; data.image_size reads a folder of class subfolders",
        )
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [c for c in classes if any(_images(c))]
    if len(classes) < 2:
        raise DataError(
            "data.source",
            f"{folder} has {len(classes)} class subfolder(s) with images; put each class's "
            "images in a subfolder named after the class (cats/, dogs/), at least 2",
        )
    return classes


def _images(folder: Path):
    return (
        p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def image_files(folder: Path) -> list[tuple[str, str]]:
    """Every image of an image folder as (path, class name), classes and files sorted:
    what a streamed read hands to its decoding tasks (paths only, no pixels)."""
    return [(str(p), c.name) for c in image_classes(folder) for p in _images(c)]


def read_image_folder(folder: Path, size: list[int], mode: str, label: str) -> pa.Table:
    """Every image decoded (``decode_images``): the in-memory path's whole folder."""
    files = image_files(folder)
    return decode_images([p for p, _ in files], [c for _, c in files], size, mode, label)


def decode_images(
    paths: list[str], classes: list[str], size: list[int], mode: str, label: str
) -> pa.Table:
    """Images decoded with Pillow, converted to ``mode`` (RGB or L, so grayscale and
    colour images mix) and resized to ``size`` ([height, width]): a table of ``image``
    ([C, H, W] float32, 0-255) and ``label`` (each image's class). The in-memory path and
    the streamed one (a Ray Data task per block of paths) decode alike, pixel for pixel.

    Raises:
        DataError: an image Pillow cannot read, naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    height, width = size
    channels = 3 if mode == "RGB" else 1
    flat = np.empty((len(paths), channels * height * width), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                pixels = image.convert(mode).resize((width, height), Image.BILINEAR)
                array = np.asarray(pixels, dtype=np.float32)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(
                "data.source", f"cannot read image {path}: {exc}; remove or replace it"
            ) from None
        flat[i] = array.reshape(height, width, channels).transpose(2, 0, 1).ravel()
    tensor_type = pa.fixed_shape_tensor(pa.float32(), [channels, height, width])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
    return pa.table(
        {
            IMAGE_COLUMN: pa.ExtensionArray.from_storage(tensor_type, storage),
            label: pa.array(classes, pa.string()),
        }
    )
