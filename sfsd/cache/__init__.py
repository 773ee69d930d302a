"""The one cache layer: how every cached artefact is named and every file or set of weights is hashed.

- `cache_key(kind, format_version, **fields)`: the key of any cached artefact (decompositions,
  statistics, sensitivity tables, evaluation entries, ...), always with the format version of what it
  names, so a change to the maths or the stored fields is a miss, never a stale hit;
- `model_fingerprint(model)`: the content fingerprint of a model's weights (what keys use to identify
  them; a name, folder, size or modification time would let weights edited in place hit an old entry);
- `file_sha256(path)` and `tensors_sha256(items)`: the hashes of a file and of named tensors;
- `versions()`: the library versions recorded with runs, archives and benchmarks.
"""

from sfsd.cache.fingerprint import model_fingerprint
from sfsd.cache.hashing import file_sha256, tensors_sha256
from sfsd.cache.keys import cache_key
from sfsd.cache.versions import versions

__all__ = ["cache_key", "file_sha256", "model_fingerprint", "tensors_sha256", "versions"]
