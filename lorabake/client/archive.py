"""A dataset as the API takes it: a zip. A folder is zipped on the fly into a temporary file."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorabake.client.errors import LorabakeClientError

# Already compressed: stored as they are, which is faster and no bigger.
_STORED = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif", ".zip"}
# What file managers leave behind; the server would report them as rejected files.
_JUNK = {"__MACOSX", "Thumbs.db", "desktop.ini"}


def zip_folder(folder: Path, dest: Path) -> Path:
    """The folder's files under their paths relative to it (`img/6_lisabp woman/01.png`), hidden files and
    file-manager leftovers left out."""
    with zipfile.ZipFile(dest, "w") as archive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _JUNK)
            for name in sorted(files):
                if name.startswith(".") or name in _JUNK:
                    continue
                path = Path(root) / name
                method = zipfile.ZIP_STORED if path.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(folder).as_posix(), compress_type=method)
    return dest


@contextmanager
def dataset_zip(dataset: str | os.PathLike[str]) -> Iterator[Path]:
    """A zip to upload: `dataset` itself when it is a file, else the folder zipped into a temporary file
    that is removed afterwards."""
    path = Path(dataset).expanduser()
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        raise LorabakeClientError(f"{path}: no such zip file or folder")
    fd, name = tempfile.mkstemp(prefix=f"{path.name or 'dataset'}-", suffix=".zip")
    os.close(fd)
    archive = Path(name)
    try:
        zip_folder(path, archive)
        yield archive
    finally:
        archive.unlink(missing_ok=True)
