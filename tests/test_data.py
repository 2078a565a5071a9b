"""Dataset readers, on tiny fixtures written in each data set's official format."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import re
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from snailcompress.data import DATASETS, load_split
from snailcompress.data import folder
from snailcompress.data.folder import find_images
from snailcompress.data.idx import FASHION_MNIST_SYSTEM_DIR
from snailcompress.errors import DatasetError

KODAK = Path("/work/shared/data/kodak")


@contextlib.contextmanager
def raises_sentence(match: str):
    """pytest.raises for a DatasetError whose message matches and is one line ending in a full stop."""
    with pytest.raises(DatasetError, match=match) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), message


def raw_png(width: int, height: int, depth: int, colour_type: int, idat: bytes | None = None) -> bytes:
    """A PNG written by hand (Pillow writes no 16-bit RGB), zero pixels unless `idat` is given; with idat=b""
    only the header, which may claim any size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if idat is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
        idat = zlib.compress(bytes((1 + width * channels * depth // 8) * height))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + (chunk(b"IDAT", idat) if idat else b"") + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------- CIFAR-10


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as the official batches (pickled by Python 2) do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def cifar_batch(rows: np.ndarray, style: str) -> bytes:
    """A batch pickled with protocol 2: "numpy.core" is byte for byte how the official files name things."""
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [i % 10 for i in range(len(rows))],
        b"data": rows,
        b"filenames": [b"img_%d.png" % i for i in range(len(rows))],
    }
    if style == "python3":
        return pickle.dumps(batch, protocol=2)
    file = io.BytesIO()
    Python2Pickler(file, protocol=2).dump(batch)
    raw = file.getvalue()
    if style == "numpy.core":
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    return raw


def write_cifar(root: Path, layout: str, style: str = "numpy.core", members: dict[str, bytes] | None = None):
    """The official batches (2 images each here, 3 in test_batch) as archive, folder, or the folder itself."""
    rng = np.random.default_rng(1)
    rows = {f"data_batch_{i}": rng.integers(0, 256, (2, 3072), dtype=np.uint8) for i in range(1, 6)}
    rows["test_batch"] = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    rows["data_batch_2"][1, 0 * 1024 + 5 * 32 + 7] = 201  # R at (y=5, x=7) of the 4th training image
    rows["data_batch_2"][1, 2 * 1024 + 31 * 32 + 0] = 77  # B at (y=31, x=0)
    files = {name: cifar_batch(r, style) for name, r in rows.items()} | (members or {})
    if layout == "archive":
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return root, rows
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return (root if layout == "folder" else folder), rows


@pytest.mark.parametrize("style", ["numpy.core", "numpy._core", "python3"])
@pytest.mark.parametrize("layout", ["archive", "folder", "folder itself"])
def test_cifar_reads_every_official_layout(tmp_path, layout, style):
    data_dir, rows = write_cifar(tmp_path, layout, style)
    train = load_split("cifar10", data_dir, "train")
    test = load_split("cifar10", data_dir, "test")
    assert (train.name, train.channels, train.image_size, len(train), len(test)) == ("cifar10", 3, (32, 32), 10, 3)
    assert train.array.dtype == np.uint8 and train.array.shape == (10, 3, 32, 32)
    assert train.array[3, 0, 5, 7] == 201 and train.array[3, 2, 31, 0] == 77
    expected = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)]).reshape(10, 3, 32, 32)
    np.testing.assert_array_equal(train.array, expected)
    np.testing.assert_array_equal(test.array, rows["test_batch"].reshape(3, 3, 32, 32))
    item = train[3]
    assert item.dtype == torch.uint8 and item.shape == (3, 32, 32) and item[0, 5, 7] == 201


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_cifar_refuses_a_pickle_that_calls_a_function_and_never_runs_it(tmp_path, layout):
    marker = tmp_path / "pwned"
    hostile = pickle.dumps({b"data": RunsShell(marker)}, protocol=2)
    data_dir, _ = write_cifar(tmp_path, layout, members={"data_batch_3": hostile})
    with raises_sentence(r"system"):
        load_split("cifar10", data_dir, "train")
    assert not marker.exists()
    pickle.loads(hostile)  # the fixture really is hostile: plain pickle runs it
    assert marker.exists()


def test_cifar_refuses_a_codec_other_than_latin1(tmp_path):
    raw = pickle.dumps({b"data": b"x"}, protocol=2).replace(b"latin1", b"rot13_")
    data_dir, _ = write_cifar(tmp_path, "folder", members={"test_batch": raw})
    with raises_sentence("codec"):
        load_split("cifar10", data_dir, "test")


def test_cifar_damaged_files(tmp_path):
    wrong_shape = cifar_batch(np.zeros((2, 3000), np.uint8), "numpy.core")
    data_dir, _ = write_cifar(tmp_path, "folder", members={"data_batch_1": wrong_shape})
    with raises_sentence(r"shape \(2, 3000\)"):
        load_split("cifar10", data_dir, "train")
    (data_dir / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps([1, 2], protocol=2))
    with raises_sentence("no b'data' array"):
        load_split("cifar10", data_dir, "train")
    (data_dir / "cifar-10-batches-py" / "data_batch_1").write_bytes(wrong_shape[:100])
    with raises_sentence("not a readable CIFAR-10 batch"):
        load_split("cifar10", data_dir, "train")
    (data_dir / "cifar-10-batches-py" / "data_batch_1").unlink()
    with raises_sentence("incomplete: data_batch_1 missing"):
        load_split("cifar10", data_dir, "train")


def test_cifar_archive_without_batches_or_truncated(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        tar.addfile(info, io.BytesIO(b""))
    with raises_sentence("lacks cifar-10-batches-py/test_batch"):
        load_split("cifar10", tmp_path, "test")
    other = tmp_path / "other"
    other.mkdir()
    write_cifar(other, "archive")
    raw = (other / "cifar-10-python.tar.gz").read_bytes()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(raw[: len(raw) // 2])
    with raises_sentence("not a readable tar.gz"):
        load_split("cifar10", tmp_path, "train")


def test_cifar_binary_version_is_named_as_not_supported(tmp_path):
    (tmp_path / "cifar-10-batches-bin").mkdir()
    (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(bytes(3073))
    with raises_sentence(r"binary version.*not supported.*cifar-10-python\.tar\.gz"):
        load_split("cifar10", tmp_path, "train")


# ---------------------------------------------------------------------------------------------------- ImageNet


def write_npz_batches(folders: list[Path], side: int, split: str, seed: int = 0) -> np.ndarray:
    """Chrabaszcz et al.'s batches (1 to 3 images each), spread over `folders` in turn; returns all rows."""
    rng = np.random.default_rng(seed)
    names = [f"train_data_batch_{i}.npz" for i in range(1, 11)] if split == "train" else ["val_data.npz"]
    rows = []
    for i, name in enumerate(names):
        data = rng.integers(0, 256, (1 + i % 3, 3 * side * side), dtype=np.uint8)
        folder = folders[i * len(folders) // len(names)]
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / name, data=data, labels=np.arange(len(data)) + 1, mean=data.mean(axis=0))
        rows.append(data)
    return np.concatenate(rows)


@pytest.mark.parametrize("layout", ["flat", "sub-folders"])
def test_imagenet32_npz_batches(tmp_path, layout):
    train_dir = tmp_path if layout == "flat" else tmp_path / "Imagenet32_train_npz"
    val_dir = tmp_path if layout == "flat" else tmp_path / "Imagenet32_val_npz"
    train_rows = write_npz_batches([train_dir], 32, "train")
    val_rows = write_npz_batches([val_dir], 32, "test", seed=1)
    write_npz_batches([tmp_path / "Imagenet64_train_npz"], 64, "train")  # the other resolution: ignored
    train = load_split("imagenet32", tmp_path, "train")
    test = load_split("imagenet32", tmp_path, "test")
    assert (train.name, train.channels, train.image_size, len(train), len(test)) == ("imagenet32", 3, (32, 32), 19, 1)
    np.testing.assert_array_equal(train.array, train_rows.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(test.array, val_rows.reshape(-1, 3, 32, 32))
    assert train.array[4, 1, 2, 3] == train_rows[4, 1024 + 2 * 32 + 3]


def test_imagenet64_npz_batches_in_two_parts(tmp_path):
    rows = write_npz_batches([tmp_path / "Imagenet64_train_part1_npz", tmp_path / "Imagenet64_train_part2_npz"], 64,
                             "train")
    train = load_split("imagenet64", tmp_path, "train")
    assert train.image_size == (64, 64)
    np.testing.assert_array_equal(train.array, rows.reshape(-1, 3, 64, 64))


def test_imagenet_png_folders_are_preferred_and_sorted_by_name(tmp_path):
    write_npz_batches([tmp_path], 32, "test")
    folder = tmp_path / "valid_32x32"
    folder.mkdir()
    rng = np.random.default_rng(2)
    pixels = {name: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for name in ["b.png", "a.png", "c.png"]}
    for name, p in pixels.items():
        Image.fromarray(p).save(folder / name)
    test = load_split("imagenet32", tmp_path, "test")
    expected = np.stack([pixels[name].transpose(2, 0, 1) for name in sorted(pixels)])
    np.testing.assert_array_equal(test.array, expected)


def test_imagenet_damaged_files(tmp_path):
    write_npz_batches([tmp_path], 32, "train")
    (tmp_path / "train_data_batch_7.npz").unlink()
    with raises_sentence("incomplete: train_data_batch_7.npz missing"):
        load_split("imagenet32", tmp_path, "train")
    raw = (tmp_path / "train_data_batch_6.npz").read_bytes()
    (tmp_path / "train_data_batch_7.npz").write_bytes(raw[: len(raw) // 2])
    with raises_sentence("train_data_batch_7.npz is not a readable ImageNet npz batch"):
        load_split("imagenet32", tmp_path, "train")
    np.savez(tmp_path / "train_data_batch_7.npz", data=np.zeros((2, 3 * 64 * 64), np.uint8))
    with raises_sentence(r"shape \(2, 12288\)"):
        load_split("imagenet32", tmp_path, "train")
    np.savez(tmp_path / "val_data.npz", data=np.array([None, 1], dtype=object))
    with raises_sentence("object data"):
        load_split("imagenet32", tmp_path, "test")
    (tmp_path / "valid_32x32").mkdir()
    Image.new("RGB", (31, 32)).save(tmp_path / "valid_32x32" / "0.png")
    with raises_sentence("31x32 where ImageNet32 images are 32x32"):
        load_split("imagenet32", tmp_path, "test")
    (tmp_path / "valid_32x32" / "0.png").write_bytes(raw_png(20000, 20000, 8, 2, idat=b""))  # a decompression bomb
    with raises_sentence("0.png is not a readable image"):
        load_split("imagenet32", tmp_path, "test")


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "RGBA", "RGB 16-bit"])
def test_imagenet_pngs_must_be_8_bit_rgb(tmp_path, mode):
    """convert("RGB") would make a 16-bit PNG 255 everywhere and quietly accept what the release never holds."""
    (tmp_path / "valid_32x32").mkdir()
    path = tmp_path / "valid_32x32" / "0.png"
    if mode == "RGB 16-bit":
        path.write_bytes(raw_png(32, 32, 16, 2))
    else:
        Image.new(mode, (32, 32), 1000 if mode == "I;16" else 7).save(path)
    with raises_sentence("0.png has mode.*8-bit RGB"):
        load_split("imagenet32", tmp_path, "test")


def test_imagenet_reads_one_release_for_both_splits(tmp_path):
    """The PNG folders win for both splits, so a model is never trained on one release and tested on the other."""
    write_npz_batches([tmp_path / "Imagenet32_train_npz"], 32, "train")
    write_npz_batches([tmp_path / "Imagenet32_val_npz"], 32, "test")
    (tmp_path / "valid_32x32").mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "valid_32x32" / "0.png")
    assert (load_split("imagenet32", tmp_path, "test").array == 9).all()
    with raises_sentence("valid_32x32/ .* but not train_32x32/"):
        load_split("imagenet32", tmp_path, "train")
    (tmp_path / "train_32x32").mkdir()
    for name in ("0.png", "1.png"):
        Image.new("RGB", (32, 32), (5, 5, 5)).save(tmp_path / "train_32x32" / name)
    assert (load_split("imagenet32", tmp_path, "train").array == 5).all()


def test_imagenet_older_pickled_release_is_named_as_not_supported(tmp_path):
    (tmp_path / "Imagenet32_val").mkdir()
    (tmp_path / "Imagenet32_val" / "val_data").write_bytes(pickle.dumps({"data": [], "labels": []}))
    with raises_sentence(r"pickled.*not supported.*val_data\.npz"):
        load_split("imagenet32", tmp_path, "test")


# ------------------------------------------------------------------------------------------ MNIST, Fashion-MNIST


def idx_bytes(images: np.ndarray, magic: int = 0x00000803) -> bytes:
    return struct.pack(">4I", magic, *images.shape) + images.tobytes()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_images(tmp_path, name, gzipped):
    rng = np.random.default_rng(3)
    images = {"train": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), "test": np.zeros((2, 28, 28), np.uint8)}
    images["train"][2, 27, 1] = 250
    for split, stem in [("train", "train-images-idx3-ubyte"), ("test", "t10k-images-idx3-ubyte")]:
        raw = idx_bytes(images[split])
        (tmp_path / (stem + ".gz" if gzipped else stem)).write_bytes(gzip.compress(raw) if gzipped else raw)
    train = load_split(name, tmp_path, "train")
    assert (train.name, train.channels, train.image_size, len(train)) == (name, 1, (28, 28), 4)
    assert train.array[2, 0, 27, 1] == 250 and train[2].shape == (1, 28, 28)
    np.testing.assert_array_equal(train.array[:, 0], images["train"])
    assert len(load_split(name, tmp_path, "test")) == 2


def test_idx_damaged_files(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8), magic=0x00000801))
    with raises_sentence("IDX magic"):
        load_split("mnist", tmp_path, "train")
    path.write_bytes(good[:-5])
    with raises_sentence("truncated or damaged"):
        load_split("mnist", tmp_path, "train")
    path.write_bytes(idx_bytes(np.zeros((3, 27, 28), np.uint8)))
    with raises_sentence("27x28 images"):
        load_split("mnist", tmp_path, "train")
    path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(good)[:-20])
    with raises_sentence("cannot be read"):
        load_split("fashion-mnist", tmp_path, "train")
    with raises_sentence(r"apt-get install dataset-fashion-mnist.*zalandoresearch"):
        load_split("fashion-mnist", tmp_path, "test")


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_the_system_location():
    train = load_split("fashion-mnist", None, "train")
    test = load_split("fashion-mnist", None, "test")
    assert train.array.shape == (60000, 1, 28, 28) and test.array.shape == (10000, 1, 28, 28)
    assert 0 < train.array.mean() < 255 and train.array.max() == 255


@pytest.mark.parametrize("name", ["cifar10", "imagenet32", "mnist"])
def test_an_empty_split_is_refused_before_it_is_cached(tmp_path, name):
    """A split of no images would pass and then fail on its first item, far from its files."""
    if name == "cifar10":
        empty = cifar_batch(np.zeros((0, 3072), np.uint8), "numpy.core")
        write_cifar(tmp_path, "folder", members={"test_batch": empty})
    elif name == "imagenet32":
        np.savez(tmp_path / "val_data.npz", data=np.zeros((0, 3072), np.uint8))
    else:
        (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    with raises_sentence("no images"):
        load_split(name, tmp_path, "test", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / f"{name}-test.h5").exists()


def _flip_last_byte_of_npz_data(path: Path) -> None:
    """Damage the last byte of an (uncompressed) npz's data.npy: a read of all of it fails its CRC."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("data.npy")
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<2H", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_length + extra_length + info.compress_size - 1] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("layout", ["cifar folder", "cifar archive", "imagenet npz", "imagenet pngs", "idx"])
def test_a_limit_reads_the_first_images_and_only_the_files_they_are_in(tmp_path, layout):
    """eval and bench --limit N: the same first N images as a whole read, without reading the rest of
    a large split (a file past them is damaged here: the whole split fails, the first N do not)."""
    if layout.startswith("cifar"):  # batches of 2: the 4 first images are in data_batch_1 and _2
        data_dir, rows = write_cifar(tmp_path, layout.split()[1], members={"data_batch_3": b"not a pickle"})
        name, split, limit = "cifar10", "train", 4
        first = np.concatenate([rows["data_batch_1"], rows["data_batch_2"]]).reshape(4, 3, 32, 32)
    elif layout == "imagenet npz":  # batches of 1, 2, 3, ... images: the first 2 are batch 1 and half of batch 2
        rows = write_npz_batches([tmp_path], 32, "train")
        _flip_last_byte_of_npz_data(tmp_path / "train_data_batch_2.npz")
        data_dir, name, split, limit, first = tmp_path, "imagenet32", "train", 2, rows[:2].reshape(2, 3, 32, 32)
    elif layout == "imagenet pngs":
        folder = tmp_path / "valid_32x32"
        folder.mkdir()
        pixels = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        for index, image in enumerate(pixels):
            Image.fromarray(image).save(folder / f"{index}.png")
        (folder / "2.png").write_bytes(b"not a png")
        data_dir, name, split, limit, first = tmp_path, "imagenet32", "test", 2, pixels.transpose(0, 3, 1, 2)
    else:
        images = np.random.default_rng(5).integers(0, 256, (3, 28, 28), dtype=np.uint8)
        (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)[:-1]))  # truncated
        data_dir, name, split, limit, first = tmp_path, "mnist", "test", 2, images[:2, None]
    with pytest.raises(DatasetError):
        load_split(name, data_dir, split)
    for cache_dir in (None, tmp_path / "cache"):
        data = load_split(name, data_dir, split, limit=limit, cache_dir=cache_dir)
        np.testing.assert_array_equal(data.array, first)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # no cache of a part


def test_a_limit_reads_the_first_images_of_a_cache(tmp_path):
    data_dir, rows = write_cifar(tmp_path, "folder")
    whole = load_split("cifar10", data_dir, "train", cache_dir=tmp_path / "cache")
    for batch in (data_dir / "cifar-10-batches-py").iterdir():
        batch.unlink()
    for limit in (1, 3, 10, 11):
        part = load_split("cifar10", data_dir, "train", cache_dir=tmp_path / "cache", limit=limit)
        np.testing.assert_array_equal(part.array, whole.array[:limit])


# ---------------------------------------------------------------------------------------------------- cache


def test_cache_is_written_once_and_then_replaces_the_source(tmp_path):
    data_dir, _ = write_cifar(tmp_path, "folder")
    cache_dir = tmp_path / "cache"
    first = load_split("cifar10", data_dir, "train", cache_dir=cache_dir)
    assert sorted(p.name for p in cache_dir.iterdir()) == ["cifar10-train.h5"]  # no temporary file left
    with h5py.File(cache_dir / "cifar10-train.h5", "r") as file:
        stored = file["images"]
        assert stored.dtype == np.uint8 and stored.chunks == (1, 3, 32, 32)
        assert stored.attrs["name"] == "cifar10" and "cifar-10-batches-py" in stored.attrs["source"]
    for batch in (data_dir / "cifar-10-batches-py").iterdir():
        batch.unlink()
    second = load_split("cifar10", data_dir, "train", cache_dir=cache_dir)
    np.testing.assert_array_equal(second.array, first.array)
    assert second.name == "cifar10" and second.image_size == (32, 32)
    with raises_sentence("not found"):
        load_split("cifar10", data_dir, "test", cache_dir=cache_dir)
    (cache_dir / "cifar10-test.h5").write_bytes(b"not hdf5")
    with raises_sentence("delete it to rebuild it"):
        load_split("cifar10", data_dir, "test", cache_dir=cache_dir)


def test_cache_of_another_data_dir_is_refused_not_served(tmp_path):
    """A cache records the --data-dir it was read from: another copy of the data set (changed, say)
    is not silently answered with the cached images."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    data_dir, _ = write_cifar(tmp_path / "a", "folder")
    other, _ = write_cifar(tmp_path / "b", "folder")
    cache_dir = tmp_path / "cache"
    load_split("cifar10", data_dir, "test", cache_dir=cache_dir)
    with h5py.File(cache_dir / "cifar10-test.h5", "r") as file:
        assert file["images"].attrs["data_dir"] == str(data_dir.resolve())
    np.testing.assert_array_equal(load_split("cifar10", data_dir, "test", cache_dir=cache_dir).array,
                                  load_split("cifar10", data_dir, "test").array)
    with raises_sentence(f"as read from {data_dir.resolve()}, not from {other.resolve()}; delete it to rebuild it"):
        load_split("cifar10", other, "test", cache_dir=cache_dir)
    from snailcompress.data.cache import read_cache, write_cache

    with raises_sentence(re.escape("not from the data set's default place (no --data-dir)")):  # nor without --data-dir
        read_cache(cache_dir / "cifar10-test.h5", "cifar10", "test", None)
    write_cache(tmp_path / "default.h5", np.zeros((1, 3, 2, 2), np.uint8), name="cifar10", split="test", source=["x"])
    with raises_sentence(re.escape(f"as read from the data set's default place (no --data-dir), not from {other.resolve()}")):
        read_cache(tmp_path / "default.h5", "cifar10", "test", other)
    assert read_cache(tmp_path / "default.h5", "cifar10", "test", None).shape == (1, 3, 2, 2)
    with h5py.File(cache_dir / "cifar10-test.h5", "r+") as file:  # as a cache written before it was recorded
        del file["images"].attrs["data_dir"]
    assert load_split("cifar10", data_dir, "test", cache_dir=cache_dir).array.shape[0] > 0  # trusted, as then
    with raises_sentence("would be read now; delete it"):  # but not for other files than it was read from
        load_split("cifar10", other, "test", cache_dir=cache_dir)


def test_cache_of_other_files_than_the_reader_would_read_now_is_refused(tmp_path, monkeypatch):
    """The paper's PNG folders added beside the npz batches: the cache of the npz is not served in their place."""
    write_npz_batches([tmp_path], 32, "test")
    cache_dir = tmp_path / "cache"
    first = load_split("imagenet32", tmp_path, "test", cache_dir=cache_dir)
    monkeypatch.chdir(tmp_path)  # the same files spelled otherwise are the same
    np.testing.assert_array_equal(load_split("imagenet32", ".", "test", cache_dir="cache").array, first.array)
    (tmp_path / "valid_32x32").mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "valid_32x32" / "0.png")
    with raises_sentence("delete it to rebuild it"):
        load_split("imagenet32", tmp_path, "test", cache_dir=cache_dir)
    (cache_dir / "imagenet32-test.h5").unlink()
    assert (load_split("imagenet32", tmp_path, "test", cache_dir=cache_dir).array == 9).all()


def test_a_cache_of_files_whose_names_hold_a_comma_is_served_from_any_directory(tmp_path, monkeypatch):
    """The files a cache was read from are kept as a list, not a string split at ", " (which cut
    ".../data, 2024/..." in two, the second half resolved against the current directory); a cache
    written before the list was kept is read as it was then."""
    (tmp_path / "data, 2024").mkdir()
    data_dir, _ = write_cifar(tmp_path / "data, 2024", "folder")
    cache_dir = tmp_path / "cache"
    (tmp_path / "elsewhere").mkdir()
    first = load_split("cifar10", data_dir, "test", cache_dir=cache_dir)
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(load_split("cifar10", data_dir, "test", cache_dir=cache_dir).array, first.array)
    with h5py.File(cache_dir / "cifar10-test.h5", "r+") as file:
        assert file["images"].attrs["source"] == str((data_dir / "cifar-10-batches-py").resolve())
        del file["images"].attrs["source_paths"]  # as an earlier version wrote it
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(load_split("cifar10", data_dir, "test", cache_dir=cache_dir).array, first.array)


def test_a_cache_stands_in_for_its_files_when_some_of_the_data_set_is_gone(tmp_path):
    """Both PNG folders cached, then train_32x32/ deleted: the train cache is served, as for a data set
    whose files are all gone, though the reader alone would refuse the half release."""
    for name, value in (("train_32x32", 5), ("valid_32x32", 9)):
        (tmp_path / name).mkdir()
        Image.new("RGB", (32, 32), (value, value, value)).save(tmp_path / name / "0.png")
    cache_dir = tmp_path / "cache"
    for split in ("train", "test"):
        load_split("imagenet32", tmp_path, split, cache_dir=cache_dir)
    shutil.rmtree(tmp_path / "train_32x32")
    assert (load_split("imagenet32", tmp_path, "train", cache_dir=cache_dir).array == 5).all()
    with raises_sentence("but not train_32x32/"):
        load_split("imagenet32", tmp_path, "train")


def test_a_cache_does_not_stand_in_where_its_files_are_there_and_the_reader_refuses(tmp_path):
    """The npz release cached, then the PNG release's train_32x32/ added: the reader refuses the test
    split (it would mix releases), and so does the cache, whose val_data.npz is still there."""
    write_npz_batches([tmp_path], 32, "test")
    cache_dir = tmp_path / "cache"
    load_split("imagenet32", tmp_path, "test", cache_dir=cache_dir)
    (tmp_path / "train_32x32").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "train_32x32" / "0.png")
    for cache in (None, cache_dir):
        with raises_sentence("but not valid_32x32/"):
            load_split("imagenet32", tmp_path, "test", cache_dir=cache)


# ---------------------------------------------------------------------------------------------------- folder


def test_whole_images_reads_only_the_images_it_gives(tmp_path, monkeypatch):
    """bench --limit N on a folder: the first N images in path order, and only those are decoded."""
    from snailcompress.data import folder

    for k in range(4):
        Image.fromarray(np.full((5, 6, 3), k, np.uint8)).save(tmp_path / f"{k}.png")
    loaded, load_image = [], folder.load_image
    monkeypatch.setattr(folder, "load_image", lambda path, *a: loaded.append(path.name) or load_image(path, *a))
    images = folder.whole_images(tmp_path, limit=2)
    assert [path.name for path, _ in images] == loaded == ["0.png", "1.png"]
    assert [int(pixels[0, 0, 0]) for _, pixels in images] == [0, 1]
    assert len(folder.whole_images(tmp_path)) == 4


def test_folder_refuses_images_that_do_not_convert_exactly_and_a_missing_directory(tmp_path):
    """A 16-bit image would be clipped to 255 by the conversion to RGB: refused, naming the file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(folder / "fine.png")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(folder / "deep.png")
    with raises_sentence("deep.png has mode I;16"):
        load_split("folder", folder, "test", crop=8, scales=(1.0,), holdout=("deep.png",))
    with raises_sentence("is not there"):
        load_split("folder", tmp_path / "missing", "test", crop=8, scales=(1.0,))
    with raises_sentence("is not a directory"):
        load_split("folder", folder / "fine.png", "test", crop=8, scales=(1.0,))


@pytest.mark.parametrize("name", ["deep.png", "deep.ppm"])
def test_folder_refuses_16_bit_images_that_pillow_opens_as_rgb(tmp_path, name):
    """Pillow opens a 16-bit RGB PNG and a PPM of maxval 65535 as mode RGB, cutting them to 8 bits: refused."""
    Image.new("RGB", (16, 16), (7, 7, 7)).save(tmp_path / "fine.png")
    raw = raw_png(16, 16, 16, 2) if name.endswith(".png") else b"P6 16 16 65535\n" + bytes(16 * 16 * 6)
    (tmp_path / name).write_bytes(raw)
    with raises_sentence(f"{name} .*16-bit"):
        load_split("folder", tmp_path, "test", crop=8, scales=(1.0,), holdout=(name,))
    with raises_sentence(f"{name} .*16-bit"):
        load_split("folder", tmp_path, "train", crop=8, scales=(1.0,))


@pytest.mark.parametrize("raw", [b"P6\n16 16\n", raw_png(20000, 20000, 8, 2, idat=b"")],
                         ids=["cut PPM header", "decompression bomb"])
def test_folder_damaged_images_are_one_line_errors(tmp_path, raw):
    Image.new("RGB", (16, 16)).save(tmp_path / "fine.png")
    (tmp_path / "bad.ppm").write_bytes(raw)
    for split, holdout in [("train", ()), ("test", ("bad",))]:
        with raises_sentence("bad.ppm is not a readable image"):
            load_split("folder", tmp_path, split, crop=8, scales=(1.0,), holdout=holdout)


def test_folder_skips_files_in_hidden_folders_below_its_root(tmp_path):
    root = tmp_path / ".photos"  # the root itself may be hidden
    for relative in ["a.png", "sub/b.png", ".thumbnails/a.png", ".git/c.png", "sub/.cache/d.png"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / relative)
    assert [p.relative_to(root).as_posix() for p in find_images(root)] == ["a.png", "sub/b.png"]


def test_folder_keeps_decoded_images_within_a_budget_and_the_same_crops(tmp_path):
    rng = np.random.default_rng(6)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
    options = dict(crop=16, scales=(1.0, 0.5), samples_per_epoch=200, seed=3, channels=3)
    bounded = folder.RandomCrops(find_images(tmp_path), cache_bytes=10_000, **options)  # two images at full size
    unbounded = folder.RandomCrops(find_images(tmp_path), cache_bytes=1 << 40, **options)
    for i in range(len(bounded)):
        assert torch.equal(bounded[i], unbounded[i])
        assert sum(image.nbytes for image in bounded._cache.values()) <= 10_000
    assert len(unbounded._cache) == 12
    assert load_split("folder", tmp_path, "train", crop=16).cache_bytes == folder.CACHE_BYTES


def coordinate_image(width: int, height: int) -> np.ndarray:
    """R = x, G = y: a crop's top-left pixel says where it was cut."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x, y, np.full_like(x, 9)], axis=-1).astype(np.uint8)


def test_folder_train_crops_are_windows_and_pure_functions_of_seed_epoch_index(tmp_path):
    image = coordinate_image(100, 80)
    Image.fromarray(image).save(tmp_path / "a.png")
    ds = load_split("folder", tmp_path, "train", crop=16, scales=(1.0,), samples_per_epoch=50, seed=7)
    assert (ds.name, ds.channels, ds.image_size, len(ds)) == ("folder", 3, (16, 16), 50)
    crops = [ds[i] for i in range(len(ds))]
    for crop in crops:
        assert crop.dtype == torch.uint8 and crop.shape == (3, 16, 16)
        x, y = int(crop[0, 0, 0]), int(crop[1, 0, 0])
        np.testing.assert_array_equal(crop.numpy(), image[y : y + 16, x : x + 16].transpose(2, 0, 1))
    again = load_split("folder", tmp_path, "train", crop=16, scales=(1.0,), samples_per_epoch=50, seed=7)
    assert all(torch.equal(again[i], crops[i]) for i in reversed(range(50)))
    again.set_epoch(1)
    assert sum(torch.equal(again[i], crops[i]) for i in range(50)) < 5
    again.set_epoch(0)
    assert all(torch.equal(again[i], crops[i]) for i in range(50))
    with pytest.raises(IndexError):
        ds[50]


def test_folder_epoch_reaches_persistent_dataloader_workers(tmp_path):
    Image.fromarray(coordinate_image(100, 80)).save(tmp_path / "a.png")
    ds = load_split("folder", tmp_path, "train", crop=16, scales=(1.0,), samples_per_epoch=8)
    loader = DataLoader(ds, batch_size=8, num_workers=1, persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        (batch,) = list(loader)
        assert torch.equal(batch, torch.stack([ds[i] for i in range(8)]))
    assert ds.epoch == 1


def test_folder_downsamples_with_a_box_filter(tmp_path):
    image = np.random.default_rng(4).integers(0, 256, (20, 26, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    ds = load_split("folder", tmp_path, "train", crop=8, scales=(0.5,), samples_per_epoch=20)
    box = ((image.reshape(10, 2, 13, 2, 3).astype(int).sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)  # rounds half up
    windows = {box[y : y + 8, x : x + 8].transpose(2, 0, 1).tobytes() for y in range(3) for x in range(6)}
    assert all(ds[i].numpy().tobytes() in windows for i in range(len(ds)))
    test = load_split("folder", tmp_path, "test", crop=8, scales=(1.0, 0.5), holdout=["a"])
    assert len(test) == 2 * 3 + 1 * 1
    np.testing.assert_array_equal(test.array[6], box[:8, :8].transpose(2, 0, 1))


def test_folder_draws_images_by_area_and_skips_those_smaller_than_the_crop(tmp_path):
    for name, (width, height), value in [("wide", (17, 16), 10), ("square", (16, 16), 20), ("small", (8, 8), 30)]:
        Image.new("RGB", (width, height), (value,) * 3).save(tmp_path / f"{name}.png")
    ds = load_split("folder", tmp_path, "train", crop=16, scales=(1.0, 0.5), samples_per_epoch=3000)
    values = np.array([int(ds[i][0, 0, 0]) for i in range(len(ds))])
    assert set(values) == {10, 20}
    assert 0.62 < np.mean(values == 10) < 0.71  # 2 crop positions against 1
    assert len(load_split("folder", tmp_path, "train", crop=8, scales=(1.0, 0.5))) == (4 + 4 + 1) + (1 + 1)


def test_folder_holdout_splits_and_tile_order(tmp_path):
    colours = {"a": 10, "b": 20, "c": 30}
    for name, value in colours.items():
        Image.new("RGB", (48, 32), (value, 0, 0)).save(tmp_path / f"{name}.png")
    image = coordinate_image(48, 32)
    Image.fromarray(image).save(tmp_path / "b.png")
    train = load_split("folder", tmp_path, "train", crop=16, scales=(1.0,), holdout=["b.png", "c"])
    assert {int(train[i][0, 0, 0]) for i in range(len(train))} == {10}
    test = load_split("folder", tmp_path, "test", crop=16, scales=(1.0,), holdout=["b.png", "c"])
    assert test.array.shape == (12, 3, 16, 16) and isinstance(test[0], torch.Tensor)
    np.testing.assert_array_equal(test.array[1], image[0:16, 16:32].transpose(2, 0, 1))
    np.testing.assert_array_equal(test.array[3], image[16:32, 0:16].transpose(2, 0, 1))
    assert (test.array[6:, 0] == 30).all()
    with raises_sentence("no image named d to hold out"):
        load_split("folder", tmp_path, "test", holdout=["c", "d"])
    with raises_sentence("no test split"):
        load_split("folder", tmp_path, "test")
    with raises_sentence("train split is empty"):
        load_split("folder", tmp_path, "train", holdout=["a", "b", "c"])


def test_folder_colour_modes_and_file_discovery(tmp_path):
    rgba = np.random.default_rng(5).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "sub" / "x.PNG")
    Image.new("L", (16, 16), 5).save(tmp_path / "y.pgm")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"resource fork")
    assert [p.name for p in find_images(tmp_path)] == ["x.PNG", "y.pgm"]
    colour = load_split("folder", tmp_path, "test", crop=16, scales=(1.0,), holdout=["x"])
    np.testing.assert_array_equal(colour.array[0], rgba[..., :3].transpose(2, 0, 1))
    gray = load_split("folder", tmp_path, "train", crop=16, scales=(1.0,), channels=1, holdout=["x"])
    assert gray.channels == 1 and torch.equal(gray[0], torch.full((1, 16, 16), 5, dtype=torch.uint8))


@pytest.mark.skipif(not KODAK.is_dir(), reason="no Kodak images in /work/shared/data/kodak")
def test_folder_on_kodak():
    train = load_split("folder", KODAK, "train", holdout=["kodim01"])
    test = load_split("folder", KODAK, "test", holdout=["kodim01"])
    tiles_per_image = 24 * 16 + 12 * 8 + 6 * 4  # 768x512 at scales 1, 1/2, 1/4
    assert len(test) == tiles_per_image and len(train) == 23 * tiles_per_image
    assert train[0].shape == (3, 32, 32) and train[0].dtype == torch.uint8
    with Image.open(KODAK / "kodim01.png") as image:
        np.testing.assert_array_equal(test.array[0], np.asarray(image.convert("RGB"))[:32, :32].transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------------- load_split


def test_load_split_rejects_unknown_names_and_misplaced_options(tmp_path):
    with raises_sentence("Unknown data set 'svhn': the known data sets are " + ", ".join(DATASETS)):
        load_split("svhn", tmp_path, "train")
    with raises_sentence("Unknown split 'val'"):
        load_split("cifar10", tmp_path, "val")
    with raises_sentence("folder data set only"):
        load_split("cifar10", tmp_path, "train", holdout=["x"])
    with raises_sentence("CIFAR-10 needs a data directory"):
        load_split("cifar10", None, "train")


def test_fixed_items_are_copies_of_a_read_only_array(tmp_path):
    data_dir, _ = write_cifar(tmp_path, "folder")
    ds = load_split("cifar10", data_dir, "test")
    item = ds[0]
    item.zero_()
    assert ds.array[0].any() and not ds.array.flags.writeable
    ds.set_epoch(3)
    assert torch.equal(ds[1], torch.from_numpy(ds.array[1].copy()))
