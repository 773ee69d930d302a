"""sha256 of a file and of named tensors: the two content hashes every checksum and key is built on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch

_CHUNK = 1 << 24  # 16 MiB: large reads, bounded memory on multi-GB files


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(items: Iterable[tuple[str, torch.Tensor]], prefix: str = "") -> str:
    """The hex sha256 of `prefix`, then each tensor's name, shape, dtype and bytes, in the order given.

    The name, shape and dtype are hashed with the bytes so that a renamed, reshaped or retyped tensor
    with the same bytes hashes differently.
    """
    digest = hashlib.sha256(prefix.encode())
    for name, tensor in items:
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()
