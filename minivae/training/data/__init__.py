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
    :mod:`minivae.training.loop`) and one fixed draw for the test set: the setting of the
    importance-weighted-autoencoder literature (Burda et al. 2016, Table 1: 86.76 nats for
    784-200-200-50 with k = 1), whose -log p(x) estimates (IWAE-5000 on the test set) are
    comparable to ours.
"""
from minivae.training.data.idx import (
                                     GZIP_MAGIC,
                                     IDX_DTYPES,
                                     DataError,
                                     IDXError,
                                     parse_idx,
                                     read_bytes,
                                     read_idx,
                                     write_idx,
)
from minivae.training.data.preprocess import (
                                     PREPROCESSING,
                                     binarize_dynamic,
                                     binarize_fixed,
                                     preprocess,
                                     to_unit_interval,
)
from minivae.training.data.sources import (
                                     DATASETS,
                                     DOWNLOAD_LIMIT_BYTES,
                                     ENV_DATA_DIR,
                                     FASHION_MNIST,
                                     MNIST,
                                     REPO_DATA_DIR,
                                     SPLITS,
                                     ChecksumError,
                                     DataFile,
                                     DataNotFoundError,
                                     Dataset,
                                     DatasetSpec,
                                     download,
                                     get_dataset_spec,
                                     load_dataset,
                                     load_verified,
                                     locate,
                                     md5_of_file,
                                     not_found_message,
                                     search_dirs,
                                     user_cache_dir,
)
