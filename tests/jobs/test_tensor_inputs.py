"""Tensor inputs: a folder of images in class subfolders, and a Parquet column of fixed-shape
tensors, train the zoo's cnn (which views each row as the data's [C, H, W]) and are served
by posting image tensors ([rows, C, H, W]) to V2. Images are standardised per channel;
images of other sizes are resized, grayscale and RGB mix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data import prepare, probe
from jobs.errors import DataError
from jobs.spec import DataSpec
from jobs.tensors import read_image_folder

SHAPES = ("circle", "square", "triangle")


def draw_shapes(folder: Path, per_class: int = 150, seed: int = 0) -> Path:
    """Three classes of white or coloured shapes at random positions and sizes, on images
    of 24 to 47 pixels, half grayscale and half RGB, one subfolder per class."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (folder / shape).mkdir(parents=True)
        for i in range(per_class):
            size = int(rng.integers(24, 48))
            mode = "RGB" if i % 2 else "L"
            image = Image.new(mode, (size, size))
            fill = tuple(int(v) for v in rng.integers(128, 256, 3)) if mode == "RGB" else 255
            r = int(rng.integers(size // 5, size // 3))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            box = [cx - r, cy - r, cx + r, cy + r]
            pen = ImageDraw.Draw(image)
            if shape == "circle":
                pen.ellipse(box, fill=fill)
            elif shape == "square":
                pen.rectangle(box, fill=fill)
            else:
                pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            image.save(folder / shape / f"{i}.png")
    return folder


def test_an_image_folder_reads_as_rgb_tensors_resized_and_standardised_per_channel(tmp_path):
    folder = draw_shapes(tmp_path / "shapes", per_class=20)
    data = prepare(DataSpec(source=str(folder), image_size=[12, 16]))
    info = data.info
    assert info.input_shape == [3, 12, 16] and info.n_features == 3 * 12 * 16
    assert info.classes == list(SHAPES) and info.columns == ["image"]
    assert info.feature_names[:2] == ["image[0]", "image[1]"]
    # one mean and std per channel, over the training rows' pixels (NumPy on the raw rows)
    raw = info.raw_features(data.x_train).reshape(-1, 3, 12 * 16).astype(np.float64)
    mean = np.asarray(info.feature_mean).reshape(3, -1)
    std = np.asarray(info.feature_std).reshape(3, -1)
    assert np.allclose(mean, raw.mean(axis=(0, 2))[:, None], rtol=1e-6)
    assert np.allclose(std, raw.std(axis=(0, 2))[:, None], rtol=1e-5)
    gray = prepare(DataSpec(source=str(folder), image_size=[8, 8], image_mode="L"))
    assert gray.info.input_shape == [1, 8, 8] and gray.x_train.shape[1] == 64


def test_image_folders_that_cannot_be_read_name_the_problem(tmp_path):
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="0 class subfolder.*put each class's images in a sub"):
        probe(DataSpec(source=str(empty), image_size=[8, 8]))
    folder = draw_shapes(tmp_path / "shapes", per_class=2)
    broken = folder / "square" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot read image {broken}"):
        read_image_folder(folder, [8, 8], "RGB", "target")
    with pytest.raises(ValueError, match="one local folder of class subfolders"):
        DataSpec(source="s3://bucket/images", image_size=[8, 8])


def test_a_streamed_image_folder_has_the_in_memory_statistics_and_split(ray_session, tmp_path):
    """Ray Data tasks decode blocks of paths; the driver lists paths only. Per-channel
    statistics, classes and the split's sizes match the in-memory read of the same folder."""
    from jobs.data import load, stream

    folder = draw_shapes(tmp_path / "shapes", per_class=20)
    spec = DataSpec(source=str(folder), image_size=[12, 12], image_mode="RGB", streaming=True)
    streamed, in_memory = stream(spec).info, prepare(spec).info
    assert streamed.reading == "streamed" and in_memory.reading == "in-memory"
    assert streamed.input_shape == in_memory.input_shape == [3, 12, 12]
    assert streamed.classes == in_memory.classes == list(SHAPES)
    assert (streamed.n_train, streamed.n_val) == (in_memory.n_train, in_memory.n_val)
    assert np.allclose(streamed.feature_mean, in_memory.feature_mean, rtol=1e-6)
    assert np.allclose(streamed.feature_std, in_memory.feature_std, rtol=1e-5)
    # streaming auto: a folder this small (a few KB of PNG) is read in memory
    auto = DataSpec(source=str(folder), image_size=[12, 12])
    assert load(auto).info.reading == "in-memory"


def tensor_parquet(path: Path, rows: np.ndarray, labels: list, kind: str) -> Path:
    """Rows of shape [n, C, H, W] as a fixed_shape_tensor, fixed-size list or list column."""
    n, width = len(rows), int(np.prod(rows.shape[1:]))
    values = pa.array(rows.reshape(-1).astype(np.float32))
    if kind == "tensor":
        storage = pa.FixedSizeListArray.from_arrays(values, width)
        column = pa.ExtensionArray.from_storage(
            pa.fixed_shape_tensor(pa.float32(), list(rows.shape[1:])), storage
        )
    elif kind == "fixed":
        column = pa.FixedSizeListArray.from_arrays(values, width)
    else:
        column = pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * width, pa.int32()), values)
    pq.write_table(pa.table({"pixels": column, "shape": labels}), path)
    return path


@pytest.mark.parametrize("kind", ["tensor", "fixed", "list"])
def test_a_tensor_column_reads_with_its_shape(tmp_path, kind):
    rows = np.random.default_rng(0).normal(size=(40, 2, 3, 4)).astype(np.float32)
    path = tensor_parquet(tmp_path / "t.parquet", rows, ["a", "b"] * 20, kind)
    shape = None if kind == "tensor" else [2, 3, 4]
    spec = DataSpec(source=str(path), label="shape", features=["pixels"], input_shape=shape)
    data = prepare(spec)
    assert data.info.input_shape == [2, 3, 4] and data.info.n_features == 24
    got = np.concatenate([data.info.raw_features(data.x_train), data.info.raw_features(data.x_val)])
    expected = rows.reshape(40, 24)
    assert {r.tobytes() for r in np.round(got, 4)} == {r.tobytes() for r in np.round(expected, 4)}


def test_tensor_columns_that_do_not_fit_are_refused_naming_the_row(tmp_path):
    rows = np.zeros((6, 4), dtype=np.float32)
    path = tensor_parquet(tmp_path / "t.parquet", rows, ["a", "b"] * 3, "list")
    with pytest.raises(DataError, match=r"'pixels' is a list column of any length; give its row"):
        probe(DataSpec(source=str(path), label="shape", features=["pixels"]))
    pixels = [[1.0, 2.0], [3.0, 4.0], [5.0], [6.0, 7.0]]
    ragged = pa.table({"pixels": pixels, "shape": list("abab")})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    spec = DataSpec(
        source=str(tmp_path / "ragged.parquet"), label="shape", features=["pixels"], input_shape=[2]
    )
    with pytest.raises(DataError, match=r"row 2 of tensor column 'pixels' has 1 values, not 2"):
        prepare(spec)
    fixed = tensor_parquet(tmp_path / "f.parquet", rows, ["a", "b"] * 3, "fixed")
    with pytest.raises(DataError, match=r"\[3, 3\] holds 9 values, but each row of 'pixels' h"):
        probe(DataSpec(source=str(fixed), label="shape", features=["pixels"], input_shape=[3, 3]))
    both = pa.table({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), 4),
                     "x": [1.0] * 6, "shape": list("ababab")})  # fmt: skip
    pq.write_table(both, tmp_path / "both.parquet")
    with pytest.raises(DataError, match="tensor column 'pixels' must be the only feature"):
        probe(DataSpec(source=str(tmp_path / "both.parquet"), label="shape"))


# ------------------------------------------------------------------ the loop, on Ray

LOOP = """\
name: {name}
data: {data}
model: {{type: cnn, params: {{channels: [16, 32]}}}}
train: {{epochs: 10, batch_size: 32, optimizer: {{lr: 0.003}}}}
tracking: {{tracking_uri: "{store}"}}
register: {{model_name: {name}}}
serve: {{name: {name}, port: {port}, cpus_per_replica: 0.25}}
"""


def _decoded(folder: Path, size: int) -> tuple[np.ndarray, list[str]]:
    """Every image as the client has it: decoded, RGB, resized, [N, 3, size, size] raw."""
    table = read_image_folder(folder, [size, size], "RGB", "label")
    rows = np.stack(table.column("image").combine_chunks().to_numpy_ndarray())
    return rows.astype(np.float32), table.column("label").to_pylist()


@pytest.mark.slow
@pytest.mark.parametrize(
    "source", ["image-folder", "image-folder-streamed", "parquet-tensor-streamed"]
)
def test_shapes_train_the_cnn_and_are_served_as_image_tensors(ray_session, tmp_path, source):
    import tritonclient.http as triton
    from ray import serve

    from orchestrator import Client
    from tests.conftest import free_port
    from tests.helpers import wait_serve_stopped, write

    folder = draw_shapes(tmp_path / "shapes")
    images, labels = _decoded(folder, 24)
    if source == "image-folder":
        data = f"{{source: '{folder}', image_size: [24, 24]}}"
    elif source == "image-folder-streamed":  # paths listed here, decoded by Ray Data tasks
        data = f"{{source: '{folder}', image_size: [24, 24], streaming: true}}"
    else:  # the same images as a Parquet fixed_shape_tensor column, streamed by Ray Data
        tensor_parquet(tmp_path / "shapes.parquet", images, labels, "tensor")
        data = f"{{source: '{tmp_path / 'shapes.parquet'}', label: shape, streaming: true}}"
    name = f"shapes-{source.replace('image-folder', 'folder').split('-tensor')[0]}"
    port = free_port()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = LOOP.format(name=name, data=data, store=store, port=port)
    wait_serve_stopped()
    try:
        result = Client(show_worker_logs=False).run(write(tmp_path, name, text))
        assert result.status == "succeeded", result
        assert result.data.reading == ("in-memory" if source == "image-folder" else "streamed")
        assert result.metrics["val_accuracy"] >= 0.9, result.metrics

        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        metadata = client.get_model_metadata(name)
        assert metadata["inputs"][0]["shape"] == [-1, 3, 24, 24]
        tensor = triton.InferInput("features", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)  # [rows, C, H, W], raw pixels
        predicted = client.infer(name, [tensor]).as_numpy("class").astype(str)
        assert float(np.mean(predicted == np.asarray(labels))) >= 0.9
        wrong = triton.InferInput("features", [2, 3, 20, 20], "FP32")
        wrong.set_data_from_numpy(np.zeros((2, 3, 20, 20), dtype=np.float32))
        with pytest.raises(Exception, match=r"the model takes \[rows, 1728\] or \[rows, 3, 24"):
            client.infer(name, [wrong])
    finally:
        serve.shutdown()
