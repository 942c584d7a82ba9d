"""Leakage between splits: exact and near-duplicate images found by perceptual hash (imagehash's pHash).

The hash is 256 bits (`hash_size=16`): the common 64-bit pHash gives plain scenes with one centred object
(as the embedded synthetic data sets draw them) identical hashes, however different their objects.

pHash shrinks the image to 64 x 64 grey levels first, so a JPEG is decoded straight to grey at the smallest DCT
scale that keeps it above that size (`Image.draft`): 2-4x faster than a full colour decode (1.3 ms against
2.8-5.2 ms per Flickr30k-sized JPEG here), hashes within a few bits of the full decode's.

Video frames (Kvasir-SEG with CVC-ClinicDB) and re-uploaded photos (Flickr30k) put near-identical images in
different splits, which inflates every held-out score. Hashes are cached per file (by size and modification
time) in one JSON file per data root under the cache folder, so a data set is hashed once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import imagehash
import numpy as np

from vigil.core.data import available_cpus
from vigil.core.files import open_image

HASH_FOLDER = "image_hashes"
HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
# pHash's own shrink (hash size x its high-frequency factor 4); the cache file names how hashes were made.
HASH_INPUT = (HASH_SIZE * 4, HASH_SIZE * 4)
HASH_METHOD = f"phash{HASH_SIZE}-grey-draft"
# Files per extra hashing process: fewer are hashed faster than a process starts.
POOL_MIN_FILES = 256


def split_leakage(
    files: dict[str, list[Path]], root: Path, cache_dir: Path, max_distance: int
) -> dict[str, dict[str, Any]]:
    """Per pair of splits `a/b`: how many of b's images have a near-duplicate (Hamming distance of the 256-bit
    pHash at most `max_distance`) in a, out of b's images, and a few examples."""
    cache = HashCache(cache_dir, root)
    hashes = {split: cache.hashes(sorted(set(paths))) for split, paths in files.items() if paths}
    cache.save()
    pairs = {}
    for first, second in itertools.combinations(hashes, 2):
        (paths_a, hashes_a), (paths_b, hashes_b) = hashes[first], hashes[second]
        nearest, partner = nearest_distances(hashes_b, hashes_a)
        duplicated = np.flatnonzero(nearest <= max_distance)
        pairs[f"{first}/{second}"] = {
            "images": len(paths_b),
            "duplicates": int(duplicated.size),
            "fraction": float(duplicated.size / len(paths_b)),
            "examples": [[str(paths_b[i]), str(paths_a[partner[i]]), int(nearest[i])] for i in duplicated[:5]],
        }
    return pairs


def nearest_distances(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash (a row of 64-bit words), the smallest Hamming distance to a reference hash and that
    reference's index."""
    count = queries.shape[0]
    nearest = np.full(count, HASH_BITS + 1, dtype=np.int64)
    partner = np.zeros(count, dtype=np.int64)
    # Chunks keep the XOR block small: 128 queries against 30k references are 120 MB.
    for start in range(0, count, 128):
        block = np.bitwise_count(queries[start : start + 128, None, :] ^ references[None, :, :]).sum(axis=-1)
        nearest[start : start + 128] = block.min(axis=1)
        partner[start : start + 128] = block.argmin(axis=1)
    return nearest, partner


def image_hash(path: Path) -> str:
    """The 256-bit pHash of one image file, as hex."""
    return str(imagehash.phash(open_image(path, "L", draft=HASH_INPUT), hash_size=HASH_SIZE))


def image_hashes(paths: list[Path]) -> list[str]:
    """`image_hash` of every file, in order; spread over the machine's CPUs when there are enough files to repay
    starting the processes (decoding is most of the time: 30k Flickr30k images take 40 s on one core)."""
    processes = min(available_cpus(), len(paths) // POOL_MIN_FILES)
    if processes < 2:
        return [image_hash(path) for path in paths]
    with ProcessPoolExecutor(processes) as pool:
        return list(pool.map(image_hash, paths, chunksize=64))


class HashCache:
    """The pHash of every image file under one data root, kept in `<cache_dir>/image_hashes/<root digest>.json`."""

    def __init__(self, cache_dir: Path, root: Path) -> None:
        digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir / HASH_FOLDER / f"{digest}-{HASH_METHOD}.json"
        self.entries: dict[str, list] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.changed = False

    def hashes(self, paths: list[Path]) -> tuple[list[Path], np.ndarray]:
        """The paths and their hashes (one row of 64-bit words each), computed only for files new or changed since
        they were cached."""
        keys, stamps = [], []
        for path in paths:
            stat = path.stat()
            keys.append(str(path.resolve()))
            stamps.append([stat.st_size, stat.st_mtime_ns])
        stale = [i for i, key in enumerate(keys) if self.entries.get(key, [None, None])[:2] != stamps[i]]
        for index, digest in zip(stale, image_hashes([paths[i] for i in stale]), strict=True):
            self.entries[keys[index]] = [*stamps[index], digest]
        self.changed |= bool(stale)
        values = np.empty((len(paths), HASH_BITS // 64), dtype=np.uint64)
        for index, key in enumerate(keys):
            values[index] = np.frombuffer(bytes.fromhex(self.entries[key][2]), dtype=">u8")
        return paths, values

    def save(self) -> None:
        """Write the cache when new hashes were computed (atomically: sweep jobs may share it)."""
        if not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{id(self)}.tmp")
        partial.write_text(json.dumps(self.entries))
        partial.replace(self.path)
