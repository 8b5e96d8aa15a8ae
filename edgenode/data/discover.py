"""Find the identity folders and their image files under a data set root.

The walk is purely by name (nothing is decoded here) and every list is sorted by plain ``str`` order, so
the same folder gives the same classes and files on every machine; the split built on top of it is then
reproducible from the seed alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgenode.errors import DataError, DataPathError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
KAGGLE_PREFIX = "pins_"
EXPECTED_LAYOUT = "expected <root>/<identity>/<image>.jpg or <root>/images/<identity>/<image>.jpg"


def images_root(root: str | os.PathLike) -> Path:
    """The folder that holds the identity folders: ``root/images`` when it exists, else ``root`` itself.

    Every relative path in a manifest is relative to this folder, so a manifest works whether the user
    points at the data set folder or at its ``images/`` sub-folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise DataPathError(f"data root {root} {what}", EXPECTED_LAYOUT)
    nested = root / "images"
    if not nested.is_dir():
        return root
    if root.resolve() not in _WARNED:  # once per data set and process: a command looks its root up many times
        _WARNED.add(root.resolve())
        beside = _identity_folders_beside(root)
        if beside:
            import warnings

            from edgenode.data.manifest import DataWarning  # manifest imports this module

            warnings.warn(f"{root}: the data set is read from {nested}; {len(beside)} folder(s) of pictures only beside "
                          f"it are left out ({', '.join(beside[:3])}{', …' if len(beside) > 3 else ''}): if they are "
                          "identities, move them into images/", DataWarning, stacklevel=2)
    return nested


_WARNED: set[Path] = set()


def _identity_folders_beside(root: Path) -> list[str]:
    """Folders next to ``root/images`` that hold pictures and nothing else, as an identity folder does (a run or
    report folder also holds its .pt, .json or .csv files): identities the user probably meant to include."""
    found = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:  # a root that can be entered but not listed: images/ was found by name
        return found
    for entry in entries:
        if entry.name == "images" or entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            names = [n for n in os.listdir(entry.path) if not n.startswith(".")]
        except OSError:
            continue
        files = [n for n in names if not os.path.isdir(os.path.join(entry.path, n))]
        if files and all(_is_image_name(n) for n in files):
            found.append(entry.name)
    return found


def class_name(folder_name: str) -> str:
    """Kaggle ships ``pins_<Identity>`` folders; the prefix is packaging, not part of the name."""
    if folder_name.startswith(KAGGLE_PREFIX) and len(folder_name) > len(KAGGLE_PREFIX):
        return folder_name[len(KAGGLE_PREFIX):]
    return folder_name


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _identity_files(base: Path, folder: Path) -> list[str]:
    """Image files anywhere below one identity folder (hidden files and folders skipped), POSIX relative."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if _is_image_name(name):
                found.append(_utf8(Path(dirpath, name).relative_to(base).as_posix(), base))
    return sorted(found)


def _utf8(relpath: str, base: Path) -> str:
    """``relpath``, refused when it is no UTF-8 (bytes the file system holds undecoded): a manifest, a teacher file
    and every report name files in UTF-8, and such a name could be written in none of them."""
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{base}: the file name {ascii(relpath)} is not UTF-8",
                        "rename it (e.g. convmv -f latin1 -t utf8 --notest -r on the data set)") from None
    return relpath


def _check_one_file_one_name(base: Path, classes: dict[str, list[str]]) -> None:
    """Refuse two paths to one file (a symlink, a hard link): the split would take them as two pictures and could
    put the same one into train and test. Distinct copies of one picture are the near-duplicates' business."""
    seen: dict[tuple[int, int], str] = {}
    for files in classes.values():
        for relpath in files:
            try:
                info = os.stat(base / relpath)
            except OSError:
                continue  # a dangling link: decoding skips and records it
            key = (info.st_dev, info.st_ino)
            if key in seen:
                raise DataError(f"{base}: {relpath!r} and {seen[key]!r} are the same file (a link): one picture "
                                "would count twice, and could land in two splits", "remove the link")
            seen[key] = relpath


def discover_images(root: str | os.PathLike) -> dict[str, list[str]]:
    """Map each identity (class name) to the sorted image paths below it, relative to ``images_root``.

    An identity folder with no images maps to an empty list rather than disappearing, so that the split
    builder can report it as excluded instead of silently dropping a person.
    """
    base = images_root(root)
    folders = sorted(
        (entry for entry in base.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )
    if not folders:
        raise DataError(f"no identity folders found in {base}", EXPECTED_LAYOUT)
    classes: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    real: dict[Path, str] = {}  # a symlinked identity folder is fine; two names for one folder would be two classes of one person
    for folder in folders:
        name = class_name(_utf8(folder.name, base))
        if name in classes:
            raise DataError(
                f"folders {origin[name]!r} and {folder.name!r} in {base} both give the identity {name!r}",
                "merge or rename one of them",
            )
        target = folder.resolve()
        if target in real:
            raise DataError(
                f"folders {real[target]!r} and {folder.name!r} in {base} are the same folder ({target}): "
                "one person would become two classes", "remove the symlink")
        real[target] = folder.name
        origin[name] = folder.name
        classes[name] = _identity_files(base, folder)
    _check_one_file_one_name(base, classes)
    return dict(sorted(classes.items()))
