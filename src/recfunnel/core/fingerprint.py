"""Model identities: a digest of a model's files that every cache is keyed by.

Swapping a model can never serve stale results, and reinstalling the same model elsewhere
still hits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_SAMPLE = 1 << 20  # bytes hashed from each end (and the middle) of a large model file
_SMALL_FILE = 4 << 20  # files up to this size are hashed whole


def model_fingerprint(model_path: Path, salt: str = "") -> str:
    """A digest of a model file or folder that survives reinstalling it elsewhere.

    Small files (configs, tokenizer) are hashed whole; large ones (weights) by size and three
    1 MiB samples, which any retraining changes, so a cache hit costs milliseconds rather
    than hashing hundreds of MB. Paths starting with a dot (hub metadata, locks) are skipped.
    """
    h = hashlib.sha256(salt.encode())
    root = model_path.parent if model_path.is_file() else model_path
    files = (
        [model_path]
        if model_path.is_file()
        else sorted(
            p
            for p in model_path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    )
    for p in files:
        size = p.stat().st_size
        h.update(f"\0{p.relative_to(root).as_posix()}\0{size}\0".encode())
        with p.open("rb") as f:
            if size <= _SMALL_FILE:
                h.update(f.read())
            else:
                for start in (0, size // 2, size - _SAMPLE):
                    f.seek(start)
                    h.update(f.read(_SAMPLE))
    return h.hexdigest()
