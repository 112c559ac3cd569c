"""Gzipped IDX reading for the PyTorch peers (numpy only, so importing it does
not import torch before the thread variables are set)."""
import gzip
import os

import numpy as np


def read_idx(path):
    """Read a gzipped IDX file into a numpy array (big-endian header)."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    if buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = buf[3]
    dims = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims}, found {data.size} bytes")
    return data.reshape(dims)


def load_split(data_dir, prefix):
    """Raw uint8 images (N,28,28) and int64 labels of one IDX split."""
    x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return x, y.astype(np.int64)
