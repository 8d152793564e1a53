"""Storage dtypes: float16 as is, bfloat16 as its raw uint16 bits (HDF5 has no bfloat16 type)."""

from __future__ import annotations

import numpy as np
import torch

STORAGE_DTYPES = ("float16", "bfloat16", "float32")


def to_storage(t: torch.Tensor, storage: str) -> np.ndarray:
    """Convert an activation tensor to the numpy array written to HDF5."""
    if storage == "bfloat16":
        return t.detach().to(torch.bfloat16).contiguous().view(torch.uint16).cpu().numpy()
    if storage == "float16":
        return t.detach().to(torch.float16).cpu().numpy()
    if storage == "float32":
        return t.detach().to(torch.float32).cpu().numpy()
    raise ValueError(f"unknown storage dtype {storage!r}; choose one of {STORAGE_DTYPES}")


def numpy_storage_dtype(storage: str) -> np.dtype:
    return {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}[storage]
