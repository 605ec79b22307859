"""Where the images are and how often each is seen: Kohya's folder convention, or a flat folder.

Pure functions over relative POSIX paths, so the API can read a layout from a zip's directory
without extracting it, and the worker from an extracted folder, with one set of rules.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.datasets.problems import Problems
from shared.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CAPTION_EXTENSIONS = (".txt", ".caption")
# `NAME_mask.png` beside `NAME.png` is that image's loss mask (masked_loss): a mask, never an image.
MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class ImageEntry:
    path: str  # relative POSIX path inside the dataset root, e.g. "img/6_lisabp woman/001.png"
    caption_path: str | None  # same-stem .txt/.caption beside it, if any
    mask_path: str | None = None  # `stem_mask.<image ext>` beside a training image, if any


@dataclass(frozen=True)
class Subset:
    folder: str  # relative folder, "" for images at the root of a flat layout
    repeats: int
    trigger: str | None  # "lisabp" in "6_lisabp woman"
    class_token: str | None  # "woman" in "6_lisabp woman"
    is_reg: bool
    images: tuple[ImageEntry, ...]

    @property
    def default_caption(self) -> str:
        """Caption for an image without a caption file: Kohya uses the folder's tokens after `N_`."""
        return " ".join(t for t in (self.trigger, self.class_token) if t)


@dataclass(frozen=True)
class DatasetLayout:
    kind: Literal["kohya", "flat"]
    subsets: tuple[Subset, ...]
    # Mask files no training image uses: no `NAME.ext` beside them, or in a regularization folder
    # (sd-scripts masks only training subsets: its ControlNet-style mask subsets have no is_reg).
    orphan_masks: tuple[str, ...] = ()
    reg_masks: tuple[str, ...] = ()

    @property
    def train_subsets(self) -> tuple[Subset, ...]:
        return tuple(s for s in self.subsets if not s.is_reg)

    @property
    def reg_subsets(self) -> tuple[Subset, ...]:
        return tuple(s for s in self.subsets if s.is_reg)


# --- detection -----------------------------------------------------------------------------------------

TRAIN_ROOT = "img"
REG_ROOT = "reg"
MAX_REPEATS = 10_000
# Kohya's subset folder: "6_lisabp woman" -> 6 repeats, tokens "lisabp woman".
_REPEATS_FOLDER = re.compile(r"^(\d+)_(.+)$")
# OS droppings that ride along in zips and copied folders; never part of a dataset.
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_JUNK_DIRS = frozenset({"__macosx"})
# Image types people do upload but the trainer does not read: refuse loudly rather than skip silently.
REJECTED_IMAGE_EXTENSIONS = frozenset(
    {".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl", ".ico"}
)
_ACCEPTED = "png, jpg/jpeg, webp"


def is_junk(path: str) -> bool:
    """OS metadata or a hidden file/folder (AppleDouble `._x.png` included)."""
    parts = path.split("/")
    if any(p.startswith(".") or p.lower() in _JUNK_DIRS for p in parts):
        return True
    return parts[-1].lower() in _JUNK_NAMES


def parse_repeats_folder(name: str) -> tuple[int, str] | None:
    """`(repeats, tokens)` for a Kohya `N_tokens` folder name, None for any other name (N unchecked)."""
    match = _REPEATS_FOLDER.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def detect_layout(
    files: Iterable[str],
    *,
    default_repeats: int = 1,
    trigger: str | None = None,
    class_token: str | None = None,
    caption_extension: str = ".txt",
) -> DatasetLayout:
    """Read the dataset's structure from relative POSIX file paths (already safe and normalized).

    Kohya layout: `img/N_trigger class/...` (+ optional `reg/N_class/...`) or `N_trigger class/...` at the
    root; images in folders nested inside an `N_` folder belong to it (as with Kohya's recursive mode).
    Flat layout: no `N_` folder anywhere at the top; every image forms one subset using `default_repeats`,
    `trigger` and `class_token` (which the Kohya layout ignores: its folder names win).
    One wrapper folder shared by every image is looked through; paths in the result stay real paths.
    An image's caption is the same-stem file with `caption_extension`, else `.txt`, else `.caption`.
    Every problem found is raised at once (shared.datasets.problems).
    """
    problems = Problems()
    layout = read_layout(
        files,
        problems,
        default_repeats=default_repeats,
        trigger=trigger,
        class_token=class_token,
        caption_extension=caption_extension,
    )
    problems.raise_any()
    assert layout is not None  # read_layout gives None only with a problem
    return layout


def read_layout(
    files: Iterable[str],
    problems: Problems,
    *,
    default_repeats: int = 1,
    trigger: str | None = None,
    class_token: str | None = None,
    caption_extension: str = ".txt",
) -> DatasetLayout | None:
    """`detect_layout` that adds what is wrong to `problems` and returns the layout of the images that are
    not at fault, so they can be checked too; None when none is left. "No images" is a problem only when
    nothing else is (a zip whose images all failed some rule is told that rule)."""
    if not 1 <= default_repeats <= MAX_REPEATS:
        raise ValueError(f"default_repeats must be 1..{MAX_REPEATS}")
    images, captions, masks = _classify(files, caption_extension, problems)
    if not images:
        _no_images(problems, f"The dataset contains no training images ({_ACCEPTED}).")
        return None
    prefix = _wrapper_prefix(images)
    caption_of = _caption_index(captions, caption_extension)
    mask_of = _mask_index(masks, images)

    groups: dict[tuple[str, str], list[str]] = {}  # (folder under prefix, origin) -> image paths
    strays: list[str] = []
    misplaced = False
    for path in images:
        try:
            where = _subset_folder(path[len(prefix) :], path)
        except DatasetError as exc:
            problems.add(exc)
            misplaced = True
            continue
        if where is None:
            strays.append(path)
        else:
            groups.setdefault(where, []).append(path)

    if not groups:
        if misplaced:
            return None
        entries = tuple(_entry(p, caption_of, mask_of) for p in strays)
        flat = Subset(prefix.rstrip("/"), default_repeats, trigger, class_token, False, entries)
        return DatasetLayout("flat", (flat,), *_unused_masks(masks, (flat,)))
    for stray in strays:
        problems.add(_mixed(stray, "is not inside an `N_trigger class` folder while other images are"))
    _drop_root_folders_beside_img(groups, problems)

    subsets: list[Subset] = []
    for (folder, origin), paths in groups.items():
        try:
            subsets.append(_kohya_subset(prefix + folder, origin == REG_ROOT, paths, caption_of, mask_of))
        except DatasetError as exc:
            problems.add(exc)
    subsets.sort(key=lambda s: s.folder)
    if not any(not s.is_reg for s in subsets):
        _no_images(
            problems,
            f"Only regularization images were found; put training images in `{TRAIN_ROOT}/N_trigger class/`.",
        )
        return None
    return DatasetLayout("kohya", tuple(subsets), *_unused_masks(masks, tuple(subsets)))


def _no_images(problems: Problems, message: str) -> None:
    if not problems:
        problems.add(DatasetError(message, code="no_images"))


def scan_dataset_dir(
    root: Path,
    *,
    default_repeats: int = 1,
    trigger: str | None = None,
    class_token: str | None = None,
    caption_extension: str = ".txt",
) -> DatasetLayout:
    """`detect_layout` over the regular files under `root`; symlinks (files or folders) are skipped."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
        for name in filenames:
            full = base / name
            if not full.is_symlink() and full.is_file():
                files.append(full.relative_to(root).as_posix())
    return detect_layout(
        files,
        default_repeats=default_repeats,
        trigger=trigger,
        class_token=class_token,
        caption_extension=caption_extension,
    )


def is_mask_name(path: str) -> bool:
    """`NAME_mask.png` (any accepted image type, suffix in any case): a loss mask, not a training image."""
    stem, ext = posixpath.splitext(path)
    return (
        ext.lower() in IMAGE_EXTENSIONS
        and stem.lower().endswith(MASK_SUFFIX)
        and len(posixpath.basename(stem)) > len(MASK_SUFFIX)
    )


def _classify(
    files: Iterable[str], caption_extension: str, problems: Problems
) -> tuple[list[str], list[str], list[str]]:
    """Sorted image, caption and mask paths; junk and unrelated files dropped, unsupported images added to
    `problems`."""
    images: list[str] = []
    captions: list[str] = []
    masks: list[str] = []
    caption_exts = {*CAPTION_EXTENSIONS, caption_extension.lower()}
    for path in sorted(set(files)):
        if not path or path.endswith("/") or is_junk(path):
            continue
        ext = posixpath.splitext(path)[1].lower()
        if is_mask_name(path):
            masks.append(path)
        elif ext in IMAGE_EXTENSIONS:
            images.append(path)
        elif ext in caption_exts:
            captions.append(path)
        elif ext in REJECTED_IMAGE_EXTENSIONS:
            problems.add(
                DatasetError(
                    f"{path!r}: {ext} images are not supported; accepted types are {_ACCEPTED}.",
                    code="unsupported_image_type",
                    entry=path,
                )
            )
    return images, captions, masks


def _wrapper_prefix(images: list[str]) -> str:
    """`"top/"` when every image sits under one plain folder (a zipped folder), else `""`."""
    tops = {p.split("/", 1)[0] for p in images}
    if len(tops) != 1 or any("/" not in p for p in images):
        return ""
    top = tops.pop()
    if top.lower() in (TRAIN_ROOT, REG_ROOT) or parse_repeats_folder(top):
        return ""
    return top + "/"


def _subset_folder(rel: str, path: str) -> tuple[str, str] | None:
    """`(N_ folder relative to the wrapper, origin)` holding the image, or None when it is in none.

    origin is "img", "reg" or "root" (an `N_` folder directly at the dataset root).
    """
    parts = rel.split("/")
    if len(parts) < 2:
        return None
    top = parts[0]
    if top.lower() in (TRAIN_ROOT, REG_ROOT):
        if len(parts) == 2 or not parse_repeats_folder(parts[1]):
            raise DatasetError(
                f"{path!r} is not inside a repeats folder: images in `{top}/` must sit in subfolders named "
                f"`N_trigger class` (e.g. `{top}/6_lisabp woman/`), where N is how often each image is seen "
                "per epoch. Without one Kohya finds no data.",
                code="missing_repeats_prefix",
                entry=path,
            )
        return f"{top}/{parts[1]}", top.lower()
    if parse_repeats_folder(top):
        return top, "root"
    return None


def _drop_root_folders_beside_img(groups: dict[tuple[str, str], list[str]], problems: Problems) -> None:
    """Training folders live either under `img/` or at the root, not both: one of them is a mistake. Each
    root folder is a problem (named by its first image) and left out of `groups`."""
    origins = {origin for _, origin in groups}
    if TRAIN_ROOT in origins and "root" in origins:
        for key in sorted(k for k in groups if k[1] == "root"):
            stray = min(groups.pop(key))
            problems.add(
                _mixed(stray, f"sits in an `N_` folder at the root while others are under `{TRAIN_ROOT}/`")
            )


def _mixed(path: str, why: str) -> DatasetError:
    return DatasetError(
        f"{path!r} {why}; use one layout: Kohya folders (`{TRAIN_ROOT}/N_trigger class/`) or a flat folder.",
        code="mixed_layout",
        entry=path,
    )


def _kohya_subset(
    folder: str, is_reg: bool, paths: list[str], caption_of: dict[str, str], mask_of: dict[str, str]
) -> Subset:
    name = folder.rsplit("/", 1)[-1]
    parsed = parse_repeats_folder(name)
    assert parsed is not None  # _subset_folder only groups N_ folders
    repeats, tokens = parsed
    if not 1 <= repeats <= MAX_REPEATS:
        raise DatasetError(
            f"Folder {folder!r}: repeats must be between 1 and {MAX_REPEATS}, got {repeats}.",
            code="invalid_repeats",
            entry=folder,
        )
    trigger, class_token = split_tokens(tokens, is_reg)
    entries = tuple(_entry(p, caption_of, {} if is_reg else mask_of) for p in paths)
    return Subset(folder, repeats, trigger, class_token, is_reg, entries)


def split_tokens(tokens: str | None, is_reg: bool) -> tuple[str | None, str | None]:
    """`"lisabp woman"` -> trigger + class. Reg folders have no trigger: all their text is class.

    A one-word training folder (`6_lisabp`) is taken as the trigger, the word the LoRA must learn.
    """
    text = " ".join((tokens or "").split())
    if not text:
        return None, None
    if is_reg:
        return None, text
    trigger, _, rest = text.partition(" ")
    return trigger, rest or None


def _caption_index(captions: list[str], caption_extension: str = ".txt") -> dict[str, str]:
    """Image path without extension -> caption path; `caption_extension` wins, then `.txt`, `.caption`."""
    order = (caption_extension.lower(), *CAPTION_EXTENSIONS)

    def rank(path: str) -> int:
        ext = posixpath.splitext(path)[1].lower()
        return order.index(ext) if ext in order else len(order)

    index: dict[str, str] = {}
    for path in captions:  # sorted, so the choice is deterministic
        stem = posixpath.splitext(path)[0]
        current = index.get(stem)
        if current is None or rank(path) < rank(current):
            index[stem] = path
    return index


def _mask_index(masks: list[str], images: list[str]) -> dict[str, str]:
    """Image path without extension -> its mask path; the first mask (sorted) wins if several match."""
    stems = {posixpath.splitext(p)[0] for p in images}
    index: dict[str, str] = {}
    for path in masks:
        stem = posixpath.splitext(path)[0][: -len(MASK_SUFFIX)]
        if stem in stems:
            index.setdefault(stem, path)
    return index


def _unused_masks(masks: list[str], subsets: tuple[Subset, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(masks of no image, masks of regularization images): listed, never trained on."""
    used = {e.mask_path for s in subsets for e in s.images if e.mask_path}
    reg_stems = {posixpath.splitext(e.path)[0] for s in subsets if s.is_reg for e in s.images}
    unused = [m for m in masks if m not in used]
    reg = tuple(m for m in unused if posixpath.splitext(m)[0][: -len(MASK_SUFFIX)] in reg_stems)
    return tuple(m for m in unused if m not in reg), reg


def _entry(path: str, caption_of: dict[str, str], mask_of: dict[str, str]) -> ImageEntry:
    stem = posixpath.splitext(path)[0]
    return ImageEntry(path=path, caption_path=caption_of.get(stem), mask_path=mask_of.get(stem))
