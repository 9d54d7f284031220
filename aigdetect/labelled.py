"""Labelled image files (real or AI, in named groups) from folders or a CSV.

Shared by binary training (groups are balanced) and evaluation (groups are
reported on their own): one reader, one format.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from .files import IMAGE_EXTENSIONS, file_identity, file_sha256_or_none, walk_folder

REAL, AI = 0, 1
LABEL_NAMES = {REAL: "real", AI: "ai"}
_LABEL_WORDS = {"real": REAL, "0": REAL, "ai": AI, "1": AI, "fake": AI, "generated": AI}


@dataclass(frozen=True)
class LabelledFile:
    """One image: its label (0 real, 1 AI) and its group (a generator family, a folder)."""

    path: str
    label: int
    group: str


def files_from_folders(real: Sequence[Path], fake: Sequence[Path],
                       extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[LabelledFile]:
    """Every image under each folder; each folder is its own group."""
    files = []
    for label, folders in ((REAL, real), (AI, fake)):
        for folder in folders:
            files += [LabelledFile(str(p), label, str(folder))
                      for p in walk_folder(folder, extensions)]
    return files


def labelled_files(real: Sequence[Path], fake: Sequence[Path], labels_csv: Path | None = None,
                   extensions: Sequence[str] = IMAGE_EXTENSIONS,
                   on_copies: Callable[[str], None] | None = None) -> list[LabelledFile]:
    """The ``--real`` / ``--fake`` folders' images, then the ``--csv`` rows if given,
    each file once (:func:`each_once`). Raises OSError if the CSV cannot be read,
    ValueError if a row is malformed or a file is labelled both real and AI."""
    files = files_from_folders(real, fake, extensions)
    return each_once(files + (files_from_csv(labels_csv) if labels_csv is not None else []),
                     on_copies)


def each_once(files: Sequence[LabelledFile],
              on_copies: Callable[[str], None] | None = None) -> list[LabelledFile]:
    """``files`` with every image kept once, at its first place: a folder given twice
    or nested in another, a hard link or symlink, or a byte-identical copy under
    another name must not count its image twice (it would weigh it double in training,
    put it on both sides of a validation split, and narrow every interval). A file with
    both labels is refused: no measurement means anything then. ``on_copies`` is told,
    in one line with an example, when files were left out under another name than the
    kept one's (a warning for the user)."""
    copies: list[tuple[LabelledFile, LabelledFile]] = []
    by_inode = _first_of_each(files, _inode_or_path, copies)
    same_bytes = _byte_identical_groups([file.path for file in by_inode])
    kept = _first_of_each(
        by_inode, lambda path: same_bytes.get(path) or _inode_or_path(path), copies)
    if copies and on_copies is not None:
        copy, first = copies[0]
        on_copies(f"{len(copies)} file(s) are the same image as another input under another "
                  f"name (a link or identical bytes), e.g. {copy.path} = {first.path}: each "
                  "image counts once")
    return kept


#: Bytes read first from files of the same size: distinct images differ within them, so
#: a set of same-size uncompressed images is not read whole to find it has no copies.
PREFIX_BYTES = 1 << 16


def _byte_identical_groups(paths: Sequence[str]) -> dict[str, str]:
    """Path -> SHA-256 of its content, for the regular, non-empty files whose bytes
    another path repeats. Only files of the same size are read, first their first
    :data:`PREFIX_BYTES`; a FIFO or device is never opened (reading one could block
    for ever, and it becomes an error record later), nor is an empty file (empty
    placeholders are not one image)."""
    sizes = {path: size for path in paths if (size := _regular_size(path))}
    same_size = Counter(sizes.values())
    prefixes = {path: (size, file_sha256_or_none(path, PREFIX_BYTES))
                for path, size in sizes.items() if same_size[size] > 1}
    same_prefix = Counter(prefixes.values())
    digests = {path: file_sha256_or_none(path) for path, key in prefixes.items()
               if key[1] is not None and same_prefix[key] > 1}
    return {path: digest for path, digest in digests.items() if digest is not None}


def _first_of_each(files: Sequence[LabelledFile], key: Callable[[str], Hashable],
                   copies: list[tuple[LabelledFile, LabelledFile]]) -> list[LabelledFile]:
    """The first file of each ``key``; (copy, kept) pairs under another name go to
    ``copies``."""
    seen: dict[Hashable, LabelledFile] = {}
    for file in files:
        first = seen.setdefault(key(file.path), file)
        if first is not file and os.path.abspath(first.path) != os.path.abspath(file.path):
            copies.append((file, first))
        if first.label != file.label:
            real, ai = sorted((first, file), key=lambda f: f.label)
            raise ValueError(f"{ai.path} (AI, in {ai.group}) is the same image as {real.path} "
                             f"(real, in {real.group}): give the two classes folders that do "
                             "not overlap")
    return list(seen.values())


def _inode_or_path(path: str) -> Hashable:
    """The file itself, however it is reached (a link); its resolved name if it cannot
    be read (it becomes an error later, once)."""
    # realpath: unlike Path.resolve, never raises on a link loop
    return file_identity(path) or os.path.realpath(path)


def _regular_size(path: str) -> int:
    """The size of a regular file; 0 for anything else or what cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return 0
    return stat.st_size if S_ISREG(stat.st_mode) else 0


def files_from_csv(path: Path) -> list[LabelledFile]:
    """``path,label[,group]`` rows; relative paths are read from the CSV's folder.
    Without a group column each label is one group."""
    files = []
    rows = [(number, row) for number, row in _csv_rows(path) if row]
    for number, row in rows:
        if row[0].strip().lower() == "path":
            continue
        if len(row) < 2 or row[1].strip().lower() not in _LABEL_WORDS:
            raise ValueError(f"{path}:{number}: {_what_is_wrong(row, number == rows[0][0])}; "
                             "expected 'path,label[,group]' with label real or ai (also 0 / 1, "
                             "fake, generated)")
        label = _LABEL_WORDS[row[1].strip().lower()]
        file = Path(row[0].strip())
        file = file if file.is_absolute() else path.parent / file
        if file.is_dir():
            raise ValueError(f"{path}:{number}: {row[0].strip()} is a folder; a CSV lists "
                             "image files (give folders as --real / --fake)")
        group = row[2].strip() if len(row) > 2 and row[2].strip() else LABEL_NAMES[label]
        files.append(LabelledFile(str(file), label, f"{path.name}:{group}"))
    return files


def _what_is_wrong(row: list[str], first: bool) -> str:
    """Why a CSV row is no labelled file, in the row's own words."""
    if len(row) < 2:
        return f"one column ({row[0].strip()!r})"
    if first:
        return f"neither the header 'path,label,group' nor a known label ({row[1].strip()!r})"
    return f"unknown label {row[1].strip()!r}"


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Numbered rows of a UTF-8 CSV; another encoding is refused with its line, since
    guessing one would misread file names."""
    data = path.read_bytes()
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would hide
        # the header
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{data[error.start]:02x}); save "
                         "the CSV as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ValueError(f"{path}:{line}: a NUL byte: not a text CSV")
    return list(enumerate(csv.reader(io.StringIO(text, newline="")), 1))
