"""The unlabelled pool: the manifest's unused images, less near-duplicates of any val or test image, decoded."""

from __future__ import annotations

import numpy as np

from edgenode.data.cache import load_file_arrays
from edgenode.data.manifest import Manifest


def load_unlabeled_pool(manifest: Manifest, data: str, near_duplicates: str | None
                        ) -> tuple[np.ndarray, list[str], list[tuple[str, str]], int]:
    """The manifest's unused images minus near-duplicates of any val or test image, decoded (and cached).

    ``near_duplicates``: a table of pairs (``--near-duplicates``), or None to find them with dHash. Returns
    (uint8 images, their files in manifest order, skipped (file, reason), how many were left out as duplicates);
    anything that needs the run's training images (``examples/ensemble_targets.py``) lists them through here.
    """
    from edgenode.data import near_duplicates as nd

    if near_duplicates:
        pairs = nd.read_pairs_of(manifest, near_duplicates)
    else:
        files = manifest.files("val") + manifest.files("test") + [f for f, _ in manifest.unused]
        hashes = nd.compute_hashes(data, files)
        pairs = nd.find_near_duplicates(files, hashes)
    entries = nd.clean_unlabeled_pool(manifest, pairs)
    images, kept, skipped = load_file_arrays(manifest, data, entries, "unlabelled")
    return images, [f for f, _ in kept], skipped, len(manifest.unused) - len(entries)
