"""Vectors on the wire and in Redis: raw little-endian float32, no pickling, no JSON floats."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

VECTOR_DTYPE = np.dtype("<f4")

Matrix = npt.NDArray[np.float32]


class VectorCodecError(ValueError):
    """A stored value is not a vector of the expected size (wrong model or corrupt entry)."""


def encode_vector(vector: npt.ArrayLike) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def decode_vectors(blobs: Sequence[bytes], dims: int) -> Matrix:
    """Stack stored vectors into one (n, dims) float32 matrix, checking each size."""
    expected = dims * VECTOR_DTYPE.itemsize
    for index, blob in enumerate(blobs):
        if len(blob) != expected:
            raise VectorCodecError(
                f"vector {index} has {len(blob)} bytes, expected {expected} for {dims} dims"
            )
    flat = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE)
    return flat.reshape(len(blobs), dims).astype(np.float32, copy=False)
