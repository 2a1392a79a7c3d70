"""Probes of the data sources (docs/reliability.md): damaged local files, a folder where a file is
expected, images and labels that disagree, and downloads from a local server on 127.0.0.1 that
serves something bad: each is refused with a message naming the file, and no download leaves
anything half-written where the loader looks."""
import gzip
import hashlib
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minivae.training import data
from minivae.training.data import (ChecksumError, DataFile, DataNotFoundError, DatasetSpec, IDXError, load_dataset,
                                   locate, write_idx)

SHAPES = {"train-images": (6, 2, 3), "train-labels": (6,), "test-images": (4, 2, 3), "test-labels": (4,)}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)


def arrays():
    return {"train-images": np.arange(36, dtype=np.uint8).reshape(6, 2, 3),
            "train-labels": np.arange(6, dtype=np.uint8),
            "test-images": np.ones((4, 2, 3), np.uint8), "test-labels": np.arange(4, dtype=np.uint8)}


def write_files(folder, compress=False):
    """The toy files into ``folder``; returns their paths by key."""
    folder.mkdir(parents=True, exist_ok=True)
    return {key: write_idx(folder / (f"{key}-idx" + (".gz" if compress else "")), array, compress=compress)
            for key, array in arrays().items()}


def md5(content):
    return hashlib.md5(content).hexdigest()


def spec(tmp_path, shapes=SHAPES, mirrors=(), gz_md5s=None, verified=True):
    """A toy data set; ``verified``: the decompressed md5 of every file is known."""
    (tmp_path / "reference").mkdir(exist_ok=True)
    contents = {key: write_idx(tmp_path / "reference" / key, array).read_bytes() for key, array in arrays().items()}
    files = {key: DataFile(f"{key}-idx", shape, (gz_md5s or {}).get(key, "f" * 32),
                           md5(contents[key]) if verified else None) for key, shape in shapes.items()}
    return DatasetSpec("toy", files, tuple(mirrors), system_dirs=(str(tmp_path / "system"),))


def load(spec_, **options):
    options.setdefault("repo_dir", spec_.system_dirs[0] + "-none")
    return load_dataset(spec_, "train", download=options.pop("download", False), **options)


# --- local files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_a_zero_byte_file(tmp_path, compress):
    paths = write_files(tmp_path / "d", compress)
    paths["train-images"].write_bytes(b"")
    with pytest.raises(IDXError, match=r"train-images-idx.*: empty \(0 bytes\)"):
        load(spec(tmp_path), data_dir=tmp_path / "d")


def test_a_zero_byte_file_in_the_cache_is_skipped_with_a_warning(tmp_path):
    write_files(tmp_path / "system")
    cache = data.user_cache_dir() / "toy"
    write_files(cache)["train-images"].write_bytes(b"")
    with pytest.warns(UserWarning, match=r"ignoring .*train-images-idx \(user cache\): .*empty"):
        train = load(spec(tmp_path))
    assert Path(train.sources["images"]).parent == tmp_path / "system"


def test_corrupted_bytes_of_a_raw_file_fail_the_md5(tmp_path):
    """A flipped pixel keeps the structure intact: only the md5 can tell."""
    path = write_files(tmp_path / "d")["train-images"]
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(ChecksumError, match="md5 of the decompressed content"):
        load(spec(tmp_path), data_dir=tmp_path / "d")


def test_corrupted_bytes_of_a_gz_file_fail_its_crc(tmp_path):
    path = write_files(tmp_path / "d", compress=True)["train-images"]
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises((IDXError, ChecksumError), match="train-images-idx.gz"):
        load(spec(tmp_path), data_dir=tmp_path / "d")


@pytest.mark.parametrize("cut", [3, 10, 30], ids=["in the magic", "in the dims", "in the values"])
def test_a_truncated_raw_file_says_where(tmp_path, cut):
    path = write_files(tmp_path / "d")["train-images"]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(IDXError, match="too short|truncated"):
        load(spec(tmp_path), data_dir=tmp_path / "d")


def test_a_gz_truncated_to_its_header(tmp_path):
    path = write_files(tmp_path / "d", compress=True)["train-images"]
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(IDXError, match="truncated or corrupt gzip file"):
        load(spec(tmp_path), data_dir=tmp_path / "d")


def test_another_file_under_the_name(tmp_path):
    """The labels file where the images are expected: wrong magic (1-D), whatever the md5."""
    paths = write_files(tmp_path / "d")
    paths["train-images"].write_bytes(paths["train-labels"].read_bytes())
    with pytest.raises(IDXError, match=r"shape \(6,\), expected \(6, 2, 3\)"):
        load(spec(tmp_path, verified=False), data_dir=tmp_path / "d")
    paths["train-images"].write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(IDXError, match="bad magic number 0x3c68746d"):
        load(spec(tmp_path), data_dir=tmp_path / "d")


def test_a_folder_where_a_file_is_expected(tmp_path):
    write_files(tmp_path / "d")["train-images"].unlink()
    (tmp_path / "d" / "train-images-idx").mkdir()
    with pytest.raises(IDXError, match="a folder or special file where the IDX file train-images-idx is expected"):
        load(spec(tmp_path), data_dir=tmp_path / "d")
    # outside an explicit --data-dir, such a folder is passed over: the next copy is used
    write_files(tmp_path / "system")
    (data.user_cache_dir() / "toy" / "train-images-idx.gz").mkdir(parents=True)
    assert Path(load(spec(tmp_path)).sources["images"]).parent == tmp_path / "system"


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_a_data_dir_that_is_no_folder(tmp_path, where):
    write_files(tmp_path / "system")       # a copy elsewhere must not be used instead
    if where == "a file":
        (tmp_path / "d").write_text("")
    with pytest.raises(DataNotFoundError, match="--data-dir .*d: " + ("no such folder" if where == "missing"
                                                                      else "not a folder")):
        load(spec(tmp_path), data_dir=tmp_path / "d")


def test_images_and_labels_that_disagree_in_count(tmp_path):
    """Each file is fine on its own (its spec says so); together they are not a data set."""
    shapes = {**SHAPES, "train-labels": (5,)}
    write_files(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx", np.arange(5, dtype=np.uint8))
    with pytest.raises(IDXError, match=r"train-images-idx has 6 images but .*train-labels-idx has 5 labels"):
        load(spec(tmp_path, shapes=shapes, verified=False), data_dir=tmp_path / "d")


# --- downloads from a local server that misbehaves -------------------------------------------------

class Misbehaving(http.server.BaseHTTPRequestHandler):
    """``/good/<file>``: the file; ``/html/``: a 200 page of HTML; ``/error/``: 500; ``/short/``:
    half the file under the full Content-Length, then the connection closes; ``/slow/``: answers
    after 3 s; ``/huge/``: an endless stream."""
    files: dict = {}

    def do_GET(self):
        kind, name = self.path.strip("/").split("/", 1)
        content = self.files.get(name, b"")
        if kind == "good":
            self._send(200, content)
        elif kind == "html":
            self._send(200, b"<html><body>Sorry, this mirror has moved.</body></html>")
        elif kind == "error":
            self._send(500, b"internal error")
        elif kind == "short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content[:len(content) // 2])
            self.close_connection = True
        elif kind == "slow":
            time.sleep(3)
            self._send(200, content)
        elif kind == "huge":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(10_000):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass

    def _send(self, status, content):
        self.send_response(status)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A server on 127.0.0.1 (port 0: any free one) that serves the toy .gz files; yields its URL."""
    served = write_files(tmp_path / "served", compress=True)
    handler = type("Handler", (Misbehaving,), {"files": {path.name: path.read_bytes() for path in served.values()}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None     # a client that gave up: not our concern
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", {key: md5(path.read_bytes()) for key, path in served.items()}
    httpd.shutdown()
    httpd.server_close()


def cache_files():
    folder = data.user_cache_dir() / "toy"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("kind, message", [("html", "md5 of the download is"), ("error", "HTTP Error 500"),
                                           ("short", r"incomplete: \d+ of \d+ bytes arrived"), ("slow", "timed out")])
def test_a_bad_download_is_rejected_and_leaves_nothing(tmp_path, server, kind, message):
    url, gz_md5s = server
    with pytest.raises(DataNotFoundError, match=message) as caught:
        load(spec(tmp_path, mirrors=(url + f"{kind}/",), gz_md5s=gz_md5s), download=True, timeout=1, verbose=False)
    assert f"{url}{kind}/train-images-idx.gz" in str(caught.value)
    assert cache_files() == []                          # no file, no temporary


def test_an_endless_download_is_cut_off_and_leaves_nothing(tmp_path, server, monkeypatch):
    url, gz_md5s = server
    monkeypatch.setattr(data.sources, "DOWNLOAD_LIMIT_BYTES", 1_000_000)
    with pytest.raises(DataNotFoundError, match="more than 1,000,000 bytes"):
        load(spec(tmp_path, mirrors=(url + "huge/",), gz_md5s=gz_md5s), download=True, timeout=5, verbose=False)
    assert cache_files() == []


def test_the_next_mirror_is_tried_after_a_bad_one(tmp_path, server):
    url, gz_md5s = server
    train = load(spec(tmp_path, mirrors=(url + "html/", url + "short/", url + "good/"), gz_md5s=gz_md5s),
                 download=True, timeout=5, verbose=False)
    np.testing.assert_array_equal(train.images, arrays()["train-images"])
    assert cache_files() == ["train-images-idx.gz", "train-labels-idx.gz"]


def test_a_corrupt_cached_file_is_replaced_by_a_verified_download(tmp_path, server):
    url, gz_md5s = server
    cache = data.user_cache_dir() / "toy"
    cache.mkdir(parents=True)
    (cache / "train-images-idx.gz").write_bytes(gzip.compress(b"\0\0\x08\x03 not the data")[:15])
    dead = cache / f".train-images-idx.gz.{2 ** 22 + 12345}.0bad.tmp"    # left by a killed download
    dead.write_bytes(b"half")
    with pytest.warns(UserWarning, match="ignoring .*train-images-idx.gz"):
        train = load(spec(tmp_path, mirrors=(url + "good/",), gz_md5s=gz_md5s), download=True, timeout=5,
                     verbose=False)
    np.testing.assert_array_equal(train.images, arrays()["train-images"])
    assert cache_files() == ["train-images-idx.gz", "train-labels-idx.gz"]      # the stale temporary is gone


def test_locate_never_reads_a_temporary(tmp_path):
    """A download's temporary file, even complete, is not a copy the loader takes."""
    paths = write_files(tmp_path / "d")
    paths["train-images"].rename(tmp_path / "d" / ".train-images-idx.gz.1.abcd.tmp")
    with pytest.raises(DataNotFoundError, match="no usable copy of train-images-idx"):
        locate(spec(tmp_path), "train-images", data_dir=tmp_path / "d", download_missing=False,
               repo_dir=tmp_path / "none")
