"""Data: find identity folders, decode any image robustly, build a reproducible split, cache the pixels.

The flow is ``discover_images`` -> ``build_manifest`` (decodes, selects, splits, writes the cache) ->
``load_split`` (normalised tensors). Everything downstream names a split by ``Manifest.sha256``.
"""

from edgenode.data.cache import cache_dir, cache_path, load_file_arrays, load_scored_split, load_split_arrays
from edgenode.data.dataset import load_split, normalize, normalize_array
from edgenode.data.decode import MAX_PIXELS, load_resized, load_rgb
from edgenode.data.discover import IMAGE_EXTENSIONS, discover_images, images_root
from edgenode.data.manifest import MANIFEST_FORMAT, SPLITS, DataWarning, Manifest, SplitConfig, build_manifest
from edgenode.data.synthetic import make_synthetic_faces

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_FORMAT",
    "MAX_PIXELS",
    "SPLITS",
    "DataWarning",
    "Manifest",
    "SplitConfig",
    "build_manifest",
    "cache_dir",
    "cache_path",
    "discover_images",
    "images_root",
    "load_resized",
    "load_rgb",
    "load_split",
    "load_file_arrays",
    "load_scored_split",
    "load_split_arrays",
    "make_synthetic_faces",
    "normalize",
    "normalize_array",
]
