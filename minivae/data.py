"""Data: the IDX file format, where MNIST-like files come from, and preprocessing.

Reading
    :func:`read_idx` reads an IDX file (raw or gzip) strictly: magic number, dimensions and exact
    length are checked, and a truncated or corrupt file raises :class:`IDXError` naming the problem.

Finding (:func:`load_dataset`), for each file, in this order:

1. an explicit ``data_dir`` (``--data-dir``) or, when none is given, ``$MINIVAE_DATA_DIR``
   (the folder itself or its ``<dataset>/`` subfolder);
2. the user cache ``$XDG_CACHE_HOME/minivae/<dataset>/`` (default ``~/.cache/minivae/<dataset>/``);
3. system folders: ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``);
4. the files shipped in the repository, ``data/<dataset>/`` (MNIST only);
5. a download from the official mirrors into the user cache, verified against the official .gz
   md5 and written atomically (temporary file + ``os.replace``): no half-written file is ever left
   where the loader looks.

Each folder may hold ``<name>.gz`` or the decompressed ``<name>``. A local file is verified by the
md5 of its *decompressed* content (the same for the official download and any recompression); where
that md5 is unknown, by the official .gz md5, else by its shape only. A bad file in the explicit
folder is an error; elsewhere it is skipped with a warning. With nothing found and no network,
:class:`DataNotFoundError` names the files, their checksums, the URLs and where to put them.

Preprocessing (:func:`preprocess`; the images become float32 rows of 784 values in [0, 1]):

``"none"``
    continuous intensities ``pixel / 255``, fitted with a Bernoulli decoder as in PyTorch's
    examples/vae. Its "loss" is a cross-entropy, not the log-likelihood of a distribution over
    images: comparable to that example's printed test loss only, not to the literature's nats.
``"fixed"``
    thresholded once, ``pixel / 255 > 0.5``: a fixed binary data set, for quick repeatable runs.
    Easier than stochastic binarization (less noise to model): its nats are lower and not
    comparable to the published tables.
``"dynamic"``
    a fresh Bernoulli draw ``x ~ Bernoulli(pixel / 255)`` every epoch for the training set (see
    :mod:`minivae.train`) and one fixed draw for the test set: the setting of the
    importance-weighted-autoencoder literature (Burda et al. 2016, Table 1: 86.76 nats for
    784-200-200-50 with k = 1), whose -log p(x) estimates (IWAE-5000 on the test set) are
    comparable to ours.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import sys
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minivae.checkpoint import atomic_open

ENV_DATA_DIR = "MINIVAE_DATA_DIR"
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPLITS = ("train", "test")
PREPROCESSING = ("none", "fixed", "dynamic")
DOWNLOAD_LIMIT_BYTES = 200 * 2 ** 20   # no MNIST-like file is bigger; bounds a misbehaving server


class DataError(Exception):
    """Base class of the data module's errors."""


class IDXError(DataError, ValueError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


class ChecksumError(DataError, ValueError):
    """A file's md5 differs from the known one."""


class DataNotFoundError(DataError, FileNotFoundError):
    """No usable copy of a data file was found and none could be downloaded."""


# --- the IDX format ------------------------------------------------------------------------------

# type code (third byte of the magic number) -> dtype; IDX stores multi-byte values big-endian
IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path) -> bytes:
    """The content of ``path``, decompressed if it is gzip (recognised by its magic bytes)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise IDXError(f"{path}: truncated or corrupt gzip file ({error}); delete it and get a "
                       "fresh copy") from error


def parse_idx(data: bytes, source="<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array of the stored dtype and shape.

    Layout: magic ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the values,
    row-major. The length must be exactly ``4 + 4 ndim + prod(sizes) * itemsize``.
    """
    if len(data) < 4:
        raise IDXError(f"{source}: {len(data)} bytes, too short for the 4-byte IDX magic number")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or data[3] == 0:
        raise IDXError(f"{source}: bad magic number 0x{data[:4].hex()}; an IDX file starts with "
                       "00 00 <type 08-0E> <ndim >= 1> (MNIST images: 0x00000803, labels: "
                       "0x00000801): not an IDX file, or corrupt")
    ndim, dtype = data[3], IDX_DTYPES[data[2]]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{source}: truncated in the header ({len(data)} bytes, the {ndim} "
                       f"dimensions need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) < expected:
        raise IDXError(f"{source}: truncated: shape {shape} of {dtype.name} needs {expected:,} "
                       f"bytes, the file has {len(data):,}")
    if len(data) > expected:
        raise IDXError(f"{source}: wrong length: shape {shape} of {dtype.name} needs {expected:,} "
                       f"bytes, the file has {len(data) - expected:,} more; corrupt or not IDX")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path, md5=None) -> np.ndarray:
    """Read an IDX file (raw or gzip). With ``md5``, the decompressed content must match it."""
    data = read_bytes(path)
    if md5 is not None:
        actual = hashlib.md5(data).hexdigest()
        if actual != md5:
            raise ChecksumError(f"{path}: md5 of the decompressed content is {actual}, expected "
                                f"{md5}; the file is corrupt or not the expected one")
    return parse_idx(data, source=str(path))


def write_idx(path, array, compress=None) -> Path:
    """Write ``array`` as IDX (gzip when ``compress`` or the name ends in .gz). For tests and tools."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("=").str: code for code, dtype in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    data = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(IDX_DTYPES[code]).tobytes())
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


# --- what the data sets are and where they live --------------------------------------------------

@dataclass(frozen=True)
class DataFile:
    """One file of a data set: its name (without .gz), the array it holds, and its checksums."""
    name: str
    shape: tuple
    gz_md5: str                 # md5 of the official .gz download (verifies downloads)
    md5: str | None = None      # md5 of the decompressed content (verifies local files); None: unknown


@dataclass(frozen=True)
class DatasetSpec:
    """A data set of four IDX files: ``files`` maps ``"train-images"`` etc. to :class:`DataFile`."""
    name: str
    files: dict
    mirrors: tuple
    system_dirs: tuple = ()
    credit: str = ""
    classes: tuple = field(default_factory=tuple)


MNIST = DatasetSpec(
    name="mnist",
    files={
        "train-images": DataFile("train-images-idx3-ubyte", (60000, 28, 28),
                                 "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels": DataFile("train-labels-idx1-ubyte", (60000,),
                                 "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        "test-images": DataFile("t10k-images-idx3-ubyte", (10000, 28, 28),
                                "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        "test-labels": DataFile("t10k-labels-idx1-ubyte", (10000,),
                                "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    credit="MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), CC BY-SA 3.0",
    classes=tuple(str(d) for d in range(10)),
)

# Decompressed md5s: the images' are upstream's (stated in /work/shared/data/README.md); the labels'
# were computed from Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1), whose decompressed
# images match upstream byte for byte.
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files={
        "train-images": DataFile("train-images-idx3-ubyte", (60000, 28, 28),
                                 "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels": DataFile("train-labels-idx1-ubyte", (60000,),
                                 "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        "test-images": DataFile("t10k-images-idx3-ubyte", (10000, 28, 28),
                                "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
        "test-labels": DataFile("t10k-labels-idx1-ubyte", (10000,),
                                "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    credit="Fashion-MNIST (H. Xiao, K. Rasul, R. Vollgraf, Zalando Research), MIT licence",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"),
)

DATASETS = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}


def get_dataset_spec(dataset) -> DatasetSpec:
    """A :class:`DatasetSpec` from its name (``"mnist"``, ``"fashion-mnist"``) or itself."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}") from None


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/minivae`` (an absolute path, per the XDG spec) or ``~/.cache/minivae``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "minivae"


def search_dirs(spec, data_dir=None, repo_dir=None) -> list:
    """The folders searched for ``spec``'s files, in order, as ``(label, path, explicit)`` tuples."""
    dirs = []
    explicit = data_dir if data_dir is not None else (os.environ.get(ENV_DATA_DIR) or None)
    if explicit is not None:
        label = "--data-dir" if data_dir is not None else f"${ENV_DATA_DIR}"
        dirs += [(label, Path(explicit), True), (label, Path(explicit) / spec.name, True)]
    dirs.append(("user cache", user_cache_dir() / spec.name, False))
    dirs += [("system", Path(d), False) for d in spec.system_dirs]
    dirs.append(("repository", Path(REPO_DATA_DIR if repo_dir is None else repo_dir) / spec.name, False))
    return dirs


def md5_of_file(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_verified(path, data_file: DataFile) -> np.ndarray:
    """Read a local copy of ``data_file`` and verify it: decompressed md5 where known, else the
    .gz md5 (for a .gz file), and always the shape."""
    path = Path(path)
    if data_file.md5 is None and path.suffix == ".gz" and md5_of_file(path) != data_file.gz_md5:
        raise ChecksumError(f"{path}: md5 {md5_of_file(path)} differs from the official "
                            f"{data_file.gz_md5}")
    array = read_idx(path, md5=data_file.md5)
    if array.shape != tuple(data_file.shape):
        raise IDXError(f"{path}: holds an array of shape {array.shape}, expected {tuple(data_file.shape)}")
    return array


def download(urls, destination, gz_md5, timeout=30.0, verbose=True) -> Path:
    """Download the first of ``urls`` that answers with content of md5 ``gz_md5`` to ``destination``.

    The bytes go to a temporary file beside ``destination`` that replaces it atomically
    (:func:`minivae.checkpoint.atomic_open`) only once their md5 is verified; a failed or wrong
    download leaves nothing behind.
    Raises :class:`DataNotFoundError` listing every URL's failure.
    """
    destination = Path(destination)
    failures = []
    for url in urls:
        try:
            if verbose:
                print(f"downloading {url} -> {destination}", file=sys.stderr)
            _download_one(url, destination, gz_md5, timeout)
            return destination
        except (OSError, ChecksumError, ValueError) as error:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {error}")
    raise DataNotFoundError("download failed:\n  " + "\n  ".join(failures))


def _download_one(url, destination, gz_md5, timeout):
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.md5(), 0
    with atomic_open(destination) as out, urllib.request.urlopen(url, timeout=timeout) as response:
        for block in iter(lambda: response.read(2 ** 16), b""):
            size += len(block)
            if size > DOWNLOAD_LIMIT_BYTES:
                raise ValueError(f"more than {DOWNLOAD_LIMIT_BYTES:,} bytes: not the expected file")
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != gz_md5:  # raising here deletes the temporary file
            raise ChecksumError(f"md5 of the download is {digest.hexdigest()}, expected {gz_md5}")


def locate(spec, key, data_dir=None, download_missing=True, repo_dir=None, timeout=30.0,
           verbose=True):
    """Find, verify and read one file of ``spec`` (``key`` e.g. ``"train-images"``).

    Returns ``(array, path)``. See the module docstring for the search order.
    """
    spec = get_dataset_spec(spec)
    data_file = spec.files[key]
    rejected = []
    for label, directory, explicit in search_dirs(spec, data_dir, repo_dir):
        for path in (directory / f"{data_file.name}.gz", directory / data_file.name):
            if not path.is_file():
                continue
            try:
                return load_verified(path, data_file), path
            except (IDXError, ChecksumError, OSError) as error:
                if explicit:
                    raise
                warnings.warn(f"ignoring {path} ({label}): {error}", stacklevel=2)
                rejected.append(f"{path}: {error}")
    download_failure = "downloads disabled"
    if download_missing:
        destination = user_cache_dir() / spec.name / f"{data_file.name}.gz"
        urls = [mirror + f"{data_file.name}.gz" for mirror in spec.mirrors]
        try:
            download(urls, destination, data_file.gz_md5, timeout=timeout, verbose=verbose)
            return load_verified(destination, data_file), destination
        except (DataError, OSError) as error:
            download_failure = str(error)
    raise DataNotFoundError(not_found_message(spec, key, data_dir, repo_dir, rejected, download_failure))


def not_found_message(spec, key, data_dir, repo_dir, rejected, download_failure) -> str:
    """What is missing, where we looked, why downloading failed, and how to fix it by hand."""
    lines = [f"{spec.name}: no usable copy of {spec.files[key].name} was found and none could be "
             "downloaded.", "Looked in (in this order):"]
    lines += [f"  {label}: {path}" for label, path, _ in search_dirs(spec, data_dir, repo_dir)]
    if data_dir is None and not os.environ.get(ENV_DATA_DIR):
        lines.insert(2, f"  --data-dir / ${ENV_DATA_DIR}: not given")
    lines += [f"Rejected: {item}" for item in rejected]
    lines += [f"Download: {download_failure}",
              f"To fix it offline, copy the files of {spec.name} (.gz or decompressed) into "
              f"{user_cache_dir() / spec.name} or any folder passed with --data-dir "
              f"(or ${ENV_DATA_DIR}):"]
    for data_file in spec.files.values():
        urls = " or ".join(mirror + data_file.name + ".gz" for mirror in spec.mirrors)
        known = f"decompressed md5 {data_file.md5}" if data_file.md5 else "decompressed md5 unknown"
        lines.append(f"  {data_file.name}.gz  (.gz md5 {data_file.gz_md5}; {known})\n      from {urls}")
    return "\n".join(lines)


@dataclass
class Dataset:
    """One split of a data set, on the host: ``images (N, 28, 28)`` and ``labels (N,)``, uint8."""
    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    sources: dict

    def __len__(self):
        return len(self.labels)

    def subset(self, n):
        """The first ``n`` examples (all when ``n`` is None or at least ``len(self)``)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"subset size must be positive, got {n}")
        return Dataset(self.name, self.split, self.images[:n], self.labels[:n], self.sources)


def load_dataset(dataset="mnist", split="train", data_dir=None, download=True, repo_dir=None,
                 timeout=30.0, verbose=True) -> Dataset:
    """Load one split (``"train"`` or ``"test"``) of ``"mnist"`` or ``"fashion-mnist"``.

    ``download=False`` never touches the network. Raises :class:`DataNotFoundError` with
    instructions when a file cannot be found.
    """
    spec = get_dataset_spec(dataset)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, images_path = locate(spec, f"{split}-images", data_dir, download, repo_dir, timeout, verbose)
    labels, labels_path = locate(spec, f"{split}-labels", data_dir, download, repo_dir, timeout, verbose)
    if len(images) != len(labels):
        raise IDXError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return Dataset(spec.name, split, images, labels,
                   {"images": str(images_path), "labels": str(labels_path)})


# --- preprocessing --------------------------------------------------------------------------------

def to_unit_interval(images, dtype="float32") -> np.ndarray:
    """uint8 images (N, H, W) -> host rows (N, H W) of intensities ``pixel / 255`` in [0, 1]."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(dtype) / 255.0


def binarize_fixed(x, threshold=0.5):
    """``1[x > threshold]`` in ``x``'s dtype, on ``x``'s device. (N, D) -> (N, D)."""
    return (x > threshold).astype(x.dtype)


def binarize_dynamic(x, random):
    """One Bernoulli draw per pixel, ``x_bin ~ Bernoulli(x)``: ``1[u < x]``, ``u ~ U[0, 1)``.

    ``random`` is a :class:`minivae.backend.Random` on ``x``'s device. (N, D) -> (N, D).
    """
    return (random.uniform(x.shape, x.dtype) < x).astype(x.dtype)


def preprocess(images, binarize="none", threshold=0.5, dtype="float32") -> np.ndarray:
    """uint8 images -> host float rows in [0, 1] for ``binarize`` = ``"none"`` or ``"fixed"``.

    ``"dynamic"`` returns the intensities unchanged: the binarization is drawn later, on the
    device (every epoch by the trainer, once for a test set with :func:`binarize_dynamic`).
    """
    if binarize not in PREPROCESSING:
        raise ValueError(f"binarize must be one of {PREPROCESSING}, got {binarize!r}")
    x = to_unit_interval(images, dtype)
    return binarize_fixed(x, threshold) if binarize == "fixed" else x
