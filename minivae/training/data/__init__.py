"""Data: MNIST-like data sets from their IDX files to float rows in [0, 1].

``idx`` (the IDX file format, read strictly: a truncated or corrupt file is an :class:`IDXError`
naming the problem), ``sources`` (the data sets' files and checksums, where they are looked for,
the verified atomic download, :func:`load_dataset`) and ``preprocess`` (intensities, fixed and
dynamic binarization, and which published numbers each is comparable to). The public names of the
three are here.
"""
from minivae.training.data.idx import (GZIP_MAGIC, IDX_DTYPES, DataError, IDXError, parse_idx, read_bytes,
                                       read_idx, write_idx)
from minivae.training.data.preprocess import (PREPROCESSING, binarize_dynamic, binarize_fixed, preprocess,
                                              to_unit_interval)
from minivae.training.data.sources import (DATASETS, DOWNLOAD_LIMIT_BYTES, ENV_DATA_DIR, FASHION_MNIST, MNIST,
                                           REPO_DATA_DIR, SPLITS, ChecksumError, DataFile, DataNotFoundError,
                                           Dataset, DatasetSpec, download, get_dataset_spec, load_dataset,
                                           load_verified, locate, md5_of_file, not_found_message, search_dirs,
                                           user_cache_dir)
