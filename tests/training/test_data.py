"""The data module: the strict IDX reader, the search order of the sources, verification, the
download path (against a local http.server only), the offline message, and preprocessing."""
import gzip
import hashlib
import http.server
import os
import struct
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import minivae
from minivae.training import data
from minivae.training.data import (MNIST, ChecksumError, DataFile, DataNotFoundError, DatasetSpec, IDXError,
                                   binarize_dynamic, binarize_fixed, load_dataset, locate, parse_idx,
                                   preprocess, read_idx, sources, write_idx)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty user cache and no $MINIVAE_DATA_DIR."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)


def idx_bytes(array):
    array = np.asarray(array)
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}[array.dtype]
    return (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(array.dtype.newbyteorder(">")).tobytes())


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


# --- the IDX reader -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, rng, dtype, compress):
    array = (rng.random((7, 3, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype).newbyteorder("=") and loaded.shape == (7, 3, 5)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.flags.writeable


def test_idx_layout_is_big_endian():
    content = idx_bytes(np.array([1, 258], dtype=np.int16))
    assert content[:8] == b"\x00\x00\x0b\x01\x00\x00\x00\x02"
    np.testing.assert_array_equal(parse_idx(content), [1, 258])


def test_truncated_raw_file(tmp_path):
    content = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes(content[:-10])
    with pytest.raises(IDXError, match=r"truncated.*3,152 bytes.*3,142"):
        read_idx(tmp_path / "short")


def test_truncated_header():
    with pytest.raises(IDXError, match="truncated in the header"):
        parse_idx(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(IDXError, match="too short"):
        parse_idx(b"\x00\x00")


def test_truncated_gzip_file(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(2000, dtype=np.uint8).reshape(20, 100) % 251))
    (tmp_path / "cut.gz").write_bytes(compressed[:len(compressed) // 2])
    with pytest.raises(IDXError, match="truncated or corrupt gzip"):
        read_idx(tmp_path / "cut.gz")


def test_corrupt_gzip_file(tmp_path):
    compressed = bytearray(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8))))
    compressed[-8] ^= 0xFF   # the CRC32 of the content
    (tmp_path / "bad.gz").write_bytes(bytes(compressed))
    with pytest.raises(IDXError, match="corrupt gzip"):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00",
                                   b"\x1f\x00\x08\x01", b"PK\x03\x04"])
def test_wrong_magic(magic):
    content = magic + idx_bytes(np.zeros(3, np.uint8))[4:]
    with pytest.raises(IDXError, match="bad magic number"):
        parse_idx(content)


def test_wrong_length_trailing_bytes(tmp_path):
    (tmp_path / "long").write_bytes(idx_bytes(np.zeros((2, 2), np.uint8)) + b"\x00")
    with pytest.raises(IDXError, match="wrong length.*1 more"):
        read_idx(tmp_path / "long")


def test_dimensions_disagreeing_with_the_content():
    content = bytearray(idx_bytes(np.zeros((3, 4), np.uint8)))
    content[7] = 4    # claims 4 rows, holds 3
    with pytest.raises(IDXError, match="truncated"):
        parse_idx(bytes(content))


def test_md5_of_decompressed_content(tmp_path):
    content = idx_bytes(np.arange(10, dtype=np.uint8))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content))
    np.testing.assert_array_equal(read_idx(path, md5=md5(content)), np.arange(10))
    with pytest.raises(ChecksumError, match=md5(content)):
        read_idx(path, md5="0" * 32)


# --- the shipped MNIST ----------------------------------------------------------------------------

def test_shipped_mnist_test_split_is_the_official_one():
    test = load_dataset("mnist", "test", download=False)
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == np.uint8
    # the official test set's class counts
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert Path(test.sources["images"]).parent == data.REPO_DATA_DIR / "mnist"


def test_shipped_mnist_training_files_verify():
    labels, path = locate(MNIST, "train-labels", download_missing=False)
    assert labels.shape == (60000,) and path.name == "train-labels-idx1-ubyte.gz"
    np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    images, _ = locate(MNIST, "train-images", download_missing=False)
    assert images.shape == (60000, 28, 28) and images.max() == 255


def test_shipped_readme_credits_the_licence():
    readme = (data.REPO_DATA_DIR / "mnist" / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "LeCun" in readme


# --- sources and their order --------------------------------------------------------------------

def toy_spec(tmp_path, md5s=None, gz_md5s=None, mirrors=()):
    """A small data set ("toy": 6 images of 2 x 3, 6 labels; test: 4 of each)."""
    shapes = {"train-images": (6, 2, 3), "train-labels": (6,), "test-images": (4, 2, 3), "test-labels": (4,)}
    names = {key: f"{key}-idx" for key in shapes}
    files = {key: DataFile(names[key], shape, (gz_md5s or {}).get(key, "f" * 32), (md5s or {}).get(key))
             for key, shape in shapes.items()}
    return DatasetSpec("toy", files, tuple(mirrors), system_dirs=(str(tmp_path / "system"),))


def toy_arrays(value):
    return {"train-images": np.full((6, 2, 3), value, np.uint8), "train-labels": np.arange(6, dtype=np.uint8),
            "test-images": np.full((4, 2, 3), value, np.uint8), "test-labels": np.arange(4, dtype=np.uint8)}


def put(folder, spec, value, compress=False):
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in toy_arrays(value).items():
        write_idx(folder / (spec.files[key].name + (".gz" if compress else "")), array, compress=compress)


def test_search_order(tmp_path, monkeypatch):
    spec = toy_spec(tmp_path)      # no md5s known: shapes are checked, so any content loads
    repo, explicit = tmp_path / "repo", tmp_path / "mine"
    cache = data.user_cache_dir() / "toy"
    assert cache == tmp_path / "xdg-cache" / "minivae" / "toy"
    put(repo / "toy", spec, 1)
    put(tmp_path / "system", spec, 2)
    put(cache, spec, 3)
    put(explicit, spec, 4)

    def loaded():
        return int(load_dataset(spec, "train", download=False, repo_dir=repo).images[0, 0, 0])

    assert int(load_dataset(spec, "train", data_dir=explicit, download=False, repo_dir=repo).images[0, 0, 0]) == 4
    monkeypatch.setenv(data.ENV_DATA_DIR, str(explicit))
    assert loaded() == 4
    monkeypatch.delenv(data.ENV_DATA_DIR)
    assert loaded() == 3
    for path in cache.iterdir():
        path.unlink()
    assert loaded() == 2
    for path in (tmp_path / "system").iterdir():
        path.unlink()
    assert loaded() == 1
    # a data dir may also hold the data set in a subfolder named after it
    put(tmp_path / "parent" / "toy", spec, 5)
    assert int(load_dataset(spec, "test", data_dir=tmp_path / "parent", download=False,
                            repo_dir=repo).images[0, 0, 0]) == 5


def test_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert data.user_cache_dir() == tmp_path / "c" / "minivae"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")      # the XDG spec says: ignore it
    assert data.user_cache_dir() == Path.home() / ".cache" / "minivae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.user_cache_dir() == Path.home() / ".cache" / "minivae"


def test_local_files_are_verified_by_decompressed_md5(tmp_path):
    arrays = toy_arrays(7)
    spec = toy_spec(tmp_path, md5s={key: md5(idx_bytes(a)) for key, a in arrays.items()})
    put(tmp_path / "good", spec, 7, compress=True)     # any gzip container: the content counts
    assert load_dataset(spec, "train", data_dir=tmp_path / "good", download=False,
                        repo_dir=tmp_path / "none").images.max() == 7
    put(tmp_path / "bad", spec, 8)
    with pytest.raises(ChecksumError, match="md5 of the decompressed content"):   # explicit: an error
        load_dataset(spec, "train", data_dir=tmp_path / "bad", download=False, repo_dir=tmp_path / "none")


def test_gz_md5_is_used_where_the_content_md5_is_unknown(tmp_path):
    spec = toy_spec(tmp_path)
    put(tmp_path / "d", spec, 1, compress=True)
    good = data.md5_of_file(tmp_path / "d" / "train-images-idx.gz")
    spec = replace(spec, files={**spec.files, "train-images": replace(spec.files["train-images"], gz_md5=good)})
    assert load_verified_ok(spec, tmp_path / "d")
    spec = replace(spec, files={**spec.files, "train-images": replace(spec.files["train-images"], gz_md5="0" * 32)})
    with pytest.raises(ChecksumError, match="official"):
        load_verified_ok(spec, tmp_path / "d")


def load_verified_ok(spec, folder):
    return data.load_verified(folder / "train-images-idx.gz", spec.files["train-images"]) is not None


def test_bad_cached_file_is_skipped_with_a_warning(tmp_path):
    arrays = toy_arrays(1)
    spec = toy_spec(tmp_path, md5s={key: md5(idx_bytes(a)) for key, a in arrays.items()})
    put(tmp_path / "repo" / "toy", spec, 1)
    cache = data.user_cache_dir() / "toy"
    cache.mkdir(parents=True)
    (cache / "train-images-idx.gz").write_bytes(gzip.compress(idx_bytes(arrays["train-images"]))[:20])
    with pytest.warns(UserWarning, match="ignoring .*train-images-idx.gz.*truncated or corrupt"):
        train = load_dataset(spec, "train", download=False, repo_dir=tmp_path / "repo")
    assert Path(train.sources["images"]).parent == tmp_path / "repo" / "toy"


def test_shape_must_match_the_spec(tmp_path):
    spec = toy_spec(tmp_path)
    (tmp_path / "d").mkdir()
    write_idx(tmp_path / "d" / "train-images-idx", np.zeros((5, 2, 3), np.uint8))
    with pytest.raises(IDXError, match=r"shape \(5, 2, 3\), expected \(6, 2, 3\)"):
        locate(spec, "train-images", data_dir=tmp_path / "d", download_missing=False, repo_dir=tmp_path)


def test_offline_message_names_files_checksums_urls_and_folders(tmp_path):
    spec = replace(data.FASHION_MNIST, system_dirs=(str(tmp_path / "system"),))  # ignore Debian's copy
    (tmp_path / "nothing-here").mkdir()       # an empty folder (a missing one is refused at once)
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset(spec, "train", download=False, repo_dir=tmp_path, data_dir=tmp_path / "nothing-here")
    message = str(caught.value)
    for file in spec.files.values():
        assert file.name in message and file.gz_md5 in message and file.md5 in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz" in message
    assert str(data.user_cache_dir() / "fashion-mnist") in message
    assert str(tmp_path / "system") in message and "--data-dir" in message
    assert "downloads disabled" in message


def test_mnist_offline_message_without_any_copy(tmp_path):
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("mnist", "test", download=False, repo_dir=tmp_path)
    message = str(caught.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "9fb629c4189551a2d022fa330f9573f3" in message
    assert "2646ac647ad5339dbf082846283269ea" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz" in message
    assert "http://yann.lecun.com/exdb/mnist/t10k-images-idx3-ubyte.gz" in message


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "valid")


# --- downloads, against a local server -----------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *args, **kwargs: QuietHandler(*args, directory=str(root), **kwargs)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_with_the_right_checksum(tmp_path, server):
    root, url = server
    put(root, toy_spec(tmp_path), 9, compress=True)
    gz_md5s = {key: data.md5_of_file(root / f"{key}-idx.gz") for key in toy_arrays(9)}
    md5s = {key: md5(idx_bytes(a)) for key, a in toy_arrays(9).items()}
    # the first mirror answers 404, the second has the files
    spec = toy_spec(tmp_path, md5s=md5s, gz_md5s=gz_md5s, mirrors=(url + "missing/", url))
    train = load_dataset(spec, "train", repo_dir=tmp_path / "none", timeout=5, verbose=False)
    assert train.images.max() == 9
    cache = data.user_cache_dir() / "toy"
    assert Path(train.sources["images"]) == cache / "train-images-idx.gz"
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx.gz", "train-labels-idx.gz"]
    # the next load finds the cached copy (no server needed)
    again = load_dataset(spec, "train", download=False, repo_dir=tmp_path / "none")
    np.testing.assert_array_equal(again.images, train.images)


def test_download_with_a_wrong_checksum_leaves_nothing(tmp_path, server):
    root, url = server
    put(root, toy_spec(tmp_path), 9, compress=True)
    spec = toy_spec(tmp_path, gz_md5s={key: "0" * 32 for key in toy_arrays(9)}, mirrors=(url,))
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset(spec, "train", repo_dir=tmp_path / "none", timeout=5, verbose=False)
    assert "md5 of the download is" in str(caught.value) and "0" * 32 in str(caught.value)
    cache = data.user_cache_dir() / "toy"
    assert not cache.exists() or list(cache.iterdir()) == []   # no file, no temporary left


def test_download_from_an_unreachable_mirror_fails_fast(tmp_path):
    import socket
    with socket.socket() as s:      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = toy_spec(tmp_path, mirrors=(f"http://127.0.0.1:{port}/",))
    with pytest.raises(DataNotFoundError, match=f"127.0.0.1:{port}/train-images-idx.gz"):
        load_dataset(spec, "train", repo_dir=tmp_path / "none", timeout=2, verbose=False)


def test_download_is_atomic(tmp_path, server, monkeypatch):
    """A download that fails half-way leaves neither the destination nor a temporary file."""
    root, url = server
    (root / "big.gz").write_bytes(os.urandom(300_000))
    destination = tmp_path / "dest" / "big.gz"
    monkeypatch.setattr(sources, "DOWNLOAD_LIMIT_BYTES", 100_000)
    with pytest.raises(DataNotFoundError, match="more than 100,000 bytes"):
        data.download([url + "big.gz"], destination, "0" * 32, timeout=5, verbose=False)
    assert list(destination.parent.iterdir()) == []


# --- preprocessing --------------------------------------------------------------------------------

def test_preprocess_intensities_and_fixed_threshold():
    images = np.array([[[0, 127], [128, 255]]], dtype=np.uint8)
    x = preprocess(images, "none")
    assert x.dtype == np.float32 and x.shape == (1, 4)
    np.testing.assert_allclose(x, [[0.0, 127 / 255, 128 / 255, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(preprocess(images, "fixed"), [[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(preprocess(images, "dynamic"), x)   # drawn later, on the device
    with pytest.raises(ValueError, match="binarize"):
        preprocess(images, "otsu")


def test_dynamic_binarization_is_a_bernoulli_draw(backend):
    p = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    x = backend.to_device(np.tile(p, (20000, 1)))
    draws = binarize_dynamic(x, backend.random(3))
    assert backend.is_native(draws) and draws.dtype == np.float32
    host = minivae.to_numpy(draws)
    assert set(np.unique(host)) <= {0.0, 1.0}
    # each column's mean estimates its p; 4.5 standard errors
    np.testing.assert_array_less(np.abs(host.mean(axis=0) - p), 4.5 * np.sqrt(p * (1 - p) / 20000) + 1e-12)
    assert host[:, 0].max() == 0.0 and host[:, -1].min() == 1.0
    # a fresh draw differs; the same seed repeats
    assert (minivae.to_numpy(binarize_dynamic(x, backend.random(4))) != host).any()
    np.testing.assert_array_equal(minivae.to_numpy(binarize_dynamic(x, backend.random(3))), host)
    # into reused buffers, in place (as the trainer does every epoch): the same draws
    in_place, scratch = x.copy(), backend.xp.empty_like(x)
    assert binarize_dynamic(in_place, backend.random(3), out=in_place, draws=scratch) is in_place
    np.testing.assert_array_equal(minivae.to_numpy(in_place), host)
    fixed = binarize_fixed(x)
    assert backend.is_native(fixed)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    test = load_dataset("fashion-mnist", "test", download=False)
    assert test.images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    assert Path(test.sources["images"]).parent == Path("/usr/share/datasets/fashion-mnist")
