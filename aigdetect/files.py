"""Finding image files: folders (recursive), single files, globs and stdin.

Problems met on the way (a missing path, an unreadable folder, a symlink loop)
are reported through a callback and never stop the walk: a batch over evidence
must account for every path it was given.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Extensions scanned by default (lower case, without the dot).
IMAGE_EXTENSIONS = (
    "jpg", "jpeg", "jpe", "jfif", "jif", "png", "webp", "tif", "tiff", "bmp", "gif", "mpo",
    "heic", "heif", "avif",
)

Problem = Callable[[str, str], None]


def _ignore(path: str, message: str) -> None:
    """Default problem handler: drop it (callers who care pass their own)."""


def unicode_safe(text: str | Path) -> str:
    """``text`` as valid Unicode: bytes of a file name that are not UTF-8 (which
    Python keeps as lone surrogates, e.g. ``\\udcff``) become ``\\xNN``.

    Such a name would otherwise crash every UTF-8 writer (CSV, the table) or make
    strict JSON parsers reject the output; results must account for every file,
    whatever its name. Same as ``os.fsencode(path).decode("utf-8", "backslashreplace")``
    on POSIX.
    """
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder made (e.g. from a Windows name)
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def parse_extensions(text: str | None) -> tuple[str, ...]:
    """``"jpg,.PNG"`` -> ``("jpg", "png")``; ``None`` gives the defaults."""
    if not text:
        return IMAGE_EXTENSIONS
    return tuple(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())


def has_extension(path: str | Path, extensions: Iterable[str]) -> bool:
    return Path(path).suffix.lower().lstrip(".") in set(extensions)


def walk_folder(
    folder: str | Path, extensions: Iterable[str], on_problem: Problem = _ignore
) -> Iterator[Path]:
    """Image files below ``folder`` in a stable (sorted) order.

    A symlinked file is read wherever it points (a folder of links is a common way
    to assemble a set). A symlinked folder is not walked: one that stays inside
    ``folder`` leads to files the walk reaches under their own names anyway (each is
    read once, and a link loop cannot arise); one that leads out of it is reported: in
    a mounted evidence image an absolute link such as ``sys -> /etc`` resolves onto
    the analyst's own machine.
    """
    extensions = set(extensions)
    top = os.path.realpath(folder)

    def report(error: OSError) -> None:
        on_problem(str(error.filename or folder), f"cannot read folder: {error.strerror}")

    def real_folder(path: str) -> bool:
        if not os.path.islink(path):
            return True
        target = os.path.realpath(path)
        if os.path.commonpath([top, target]) != top:
            on_problem(path, f"symlinked folder leads outside the input folder (to {target}): "
                       "not followed; name the target itself to scan it")
        return False

    for root, dirs, names in os.walk(folder, onerror=report):
        dirs[:] = sorted(d for d in dirs if real_folder(os.path.join(root, d)))
        for name in sorted(names):
            if has_extension(name, extensions):
                yield Path(root) / name


def iter_inputs(
    inputs: Iterable[str],
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    on_problem: Problem = _ignore,
    stdin: Iterable[str] | None = None,
    null: bool = False,
    on_folder: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Expand command-line inputs into image paths, each once.

    A file named explicitly is taken whatever its extension (the user asked for
    it); folders and globs are filtered by ``extensions``. ``-`` reads one path
    per line from standard input, or with ``null`` one path per NUL byte
    (``find -print0``), the only separator no file name can contain.
    ``on_folder`` hears of every folder searched (named, listed on stdin, or the
    fixed part of a glob): outputs must stay out of them.
    """
    extensions = tuple(extensions)
    emitted: set[str] = set()
    for item in inputs:
        for path in _expand(item, extensions, on_problem, stdin, null, on_folder or _skip):
            key = os.path.abspath(path)
            if key not in emitted:
                emitted.add(key)
                yield path


def stdin_paths(stdin: Iterable[str] | None = None, null: bool = False) -> Iterator[str]:
    """Paths listed on standard input (or in ``stdin``), empty entries skipped.

    The real stdin is read as bytes and decoded like file names (``os.fsdecode``),
    so a name that is not UTF-8 is still found rather than crashing the decoder.
    """
    if stdin is not None:
        if null:
            yield from (name for name in "".join(stdin).split("\0") if name)
        else:
            yield from (name for line in stdin if (name := line.rstrip("\r\n")))
        return
    if null:
        names = sys.stdin.buffer.read().split(b"\0")
    else:
        names = (line.rstrip(b"\r\n") for line in sys.stdin.buffer)
    yield from (os.fsdecode(name) for name in names if name)


def _expand(
    item: str, extensions: tuple[str, ...], on_problem: Problem, stdin: Iterable[str] | None,
    null: bool, on_folder: Callable[[Path], None],
) -> Iterator[Path]:
    if item == "-":
        for name in stdin_paths(stdin, null):
            yield from _expand(name, extensions, on_problem, None, False, on_folder)
        return
    path = Path(item)
    try:
        is_dir, exists = path.is_dir(), path.exists() or path.is_symlink()
    except OSError as error:  # e.g. a name longer than the file system allows
        on_problem(item, f"cannot read: {error.strerror}")
        return
    if is_dir:
        on_folder(path)
        yield from walk_folder(path, extensions, on_problem)
    elif exists:
        yield path
    elif glob.has_magic(item):
        on_folder(glob_root(item))
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            on_problem(item, "no file matches this pattern")
        for match in matches:
            if Path(match).is_dir():
                on_folder(Path(match))
                yield from walk_folder(match, extensions, on_problem)
            elif has_extension(match, extensions):
                yield Path(match)
    else:
        on_problem(item, "no such file or folder")


def glob_root(pattern: str) -> Path:
    """The folder a glob searches: its leading parts without wildcards
    (``ev/*/x.jpg`` -> ``ev``, ``*.jpg`` -> ``.``)."""
    fixed = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _skip(folder: Path) -> None:
    """Default folder handler: callers who keep outputs apart pass their own."""


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """The file itself, however it is reached (device and inode: a hard or symbolic link
    gives the same); None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """Hex SHA-256 of a file (of its first ``limit`` bytes), read in chunks: identifies
    evidence and weights."""
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb") as handle:
        while left is None or left > 0:
            chunk = handle.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            left = None if left is None else left - len(chunk)
    return digest.hexdigest()


def file_sha256_or_none(path: str | Path, limit: int | None = None) -> str | None:
    """:func:`file_sha256`, or None when the file cannot be read (a batch goes on)."""
    try:
        return file_sha256(path, limit)
    except OSError:
        return None


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    A crash or an interrupted run leaves the old file (or none), never half a
    file: checkpoints, caches and density files are read back by later runs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
