"""Where MNIST-like files come from: the data sets' files and checksums, the folders searched, the
verified download, and :func:`load_dataset`.

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
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from http.client import HTTPException
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minivae.training.checkpoint import atomic_open
from minivae.training.data.idx import ChecksumError, DataError, IDXError, read_idx

ENV_DATA_DIR = "MINIVAE_DATA_DIR"
REPO_DATA_DIR = Path(__file__).resolve().parents[3] / "data"
SPLITS = ("train", "test")
DOWNLOAD_LIMIT_BYTES = 200 * 2 ** 20   # no MNIST-like file is bigger; bounds a misbehaving server


class DataNotFoundError(DataError, FileNotFoundError):
    """No usable copy of a data file was found and none could be downloaded."""


# --- what the data sets are and where they live --------------------------------------------------

@dataclass(frozen=True)
class DataFile:
    """One file of a data set: its name (without .gz), the array it holds, and its checksums."""
    name: str
    shape: tuple[int, ...]
    gz_md5: str                 # md5 of the official .gz download (verifies downloads)
    md5: str | None = None      # md5 of the decompressed content (verifies local files); None: unknown


@dataclass(frozen=True)
class DatasetSpec:
    """A data set of four IDX files: ``files`` maps ``"train-images"`` etc. to :class:`DataFile`."""
    name: str
    files: dict[str, DataFile]
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    credit: str = ""
    classes: tuple[str, ...] = field(default_factory=tuple)


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


def get_dataset_spec(dataset: str | DatasetSpec) -> DatasetSpec:
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


def search_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None = None,
                repo_dir: str | os.PathLike | None = None) -> list[tuple[str, Path, bool]]:
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


def md5_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_verified(path: str | os.PathLike, data_file: DataFile) -> np.ndarray:
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


def download(urls: Iterable[str], destination: str | os.PathLike, gz_md5: str, timeout: float = 30.0,
             verbose: bool = True) -> Path:
    """Download the first of ``urls`` that answers with content of md5 ``gz_md5`` to ``destination``.

    The bytes go to a temporary file beside ``destination`` that replaces it atomically
    (:func:`minivae.training.checkpoint.atomic_open`) only once their md5 is verified; a failed or wrong
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
        except (OSError, HTTPException, ChecksumError, ValueError) as error:  # URLError, timeouts: OSErrors
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
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and size != int(length):   # the server hung up early
            raise ValueError(f"incomplete: {size:,} of {int(length):,} bytes arrived")
        if digest.hexdigest() != gz_md5:  # raising here deletes the temporary file
            raise ChecksumError(f"md5 of the download is {digest.hexdigest()}, expected {gz_md5}")


def locate(spec: str | DatasetSpec, key: str, data_dir: str | os.PathLike | None = None,
           download_missing: bool = True, repo_dir: str | os.PathLike | None = None, timeout: float = 30.0,
           verbose: bool = True) -> tuple[np.ndarray, Path]:
    """Find, verify and read one file of ``spec`` (``key`` e.g. ``"train-images"``).

    Returns ``(array, path)``. See the module docstring for the search order.
    """
    spec = get_dataset_spec(spec)
    data_file = spec.files[key]
    rejected = []
    dirs = search_dirs(spec, data_dir, repo_dir)
    label, first, explicit = dirs[0]
    if explicit and not first.is_dir():
        # a folder named explicitly must exist: a typo must not fall back to other copies unnoticed
        raise DataNotFoundError(f"{label} {first}: " + ("not a folder" if first.exists() else "no such folder"))
    for label, directory, explicit in dirs:
        for path in (directory / f"{data_file.name}.gz", directory / data_file.name):
            if explicit and path.exists() and not path.is_file():
                raise IDXError(f"{path}: a folder or special file where the IDX file {data_file.name} "
                               "is expected")
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


def not_found_message(spec: DatasetSpec, key: str, data_dir: str | os.PathLike | None,
                      repo_dir: str | os.PathLike | None, rejected: list[str], download_failure: str) -> str:
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
    sources: dict[str, str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> Dataset:
        """The first ``n`` examples (all when ``n`` is None or at least ``len(self)``)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"subset size must be positive, got {n}")
        return Dataset(self.name, self.split, self.images[:n], self.labels[:n], self.sources)


def load_dataset(dataset: str | DatasetSpec = "mnist", split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = True, repo_dir: str | os.PathLike | None = None, timeout: float = 30.0,
                 verbose: bool = True) -> Dataset:
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
