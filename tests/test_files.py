"""Finding image files: aigdetect.files (folders, explicit files, globs, stdin, problems)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aigdetect.files import (
    IMAGE_EXTENSIONS,
    glob_root,
    iter_inputs,
    parse_extensions,
    walk_folder,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{b.jpg, A.JPG, c.Png, notes.txt, sub/{z.jpeg, y.tiff, deeper/x.WEBP}, empty/}"""
    root = tmp_path / "root"
    for name in ("b.jpg", "A.JPG", "c.Png", "notes.txt", "sub/z.jpeg", "sub/y.tiff",
                 "sub/deeper/x.WEBP", "sub/readme.md"):
        touch(root / name)
    (root / "empty").mkdir()
    return root


class Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __call__(self, path: str, message: str) -> None:
        self.items.append((path, message))


def rel(paths, root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def test_parse_extensions() -> None:
    assert parse_extensions(None) == IMAGE_EXTENSIONS
    assert parse_extensions("") == IMAGE_EXTENSIONS
    assert parse_extensions("jpg, .PNG,,Tif ") == ("jpg", "png", "tif")


def test_walk_folder_recursive_sorted_case_insensitive(tree: Path) -> None:
    found = list(walk_folder(tree, IMAGE_EXTENSIONS))
    assert all(isinstance(p, Path) for p in found)
    # files of a folder sorted, then its sub-folders (sorted) in turn
    assert rel(found, tree) == ["A.JPG", "b.jpg", "c.Png", "sub/y.tiff", "sub/z.jpeg",
                                "sub/deeper/x.WEBP"]
    assert list(walk_folder(tree, IMAGE_EXTENSIONS)) == found  # stable


def test_walk_folder_extension_filter(tree: Path) -> None:
    assert rel(walk_folder(tree, parse_extensions("jpg")), tree) == ["A.JPG", "b.jpg"]
    assert rel(walk_folder(tree, parse_extensions(".PNG,webp")), tree) == [
        "c.Png", "sub/deeper/x.WEBP"]
    assert list(walk_folder(tree / "empty", IMAGE_EXTENSIONS)) == []


def test_iter_inputs_folder_and_explicit_files(tree: Path) -> None:
    problems = Problems()
    found = list(iter_inputs([str(tree / "notes.txt"), str(tree / "sub")],
                             IMAGE_EXTENSIONS, problems))
    # an explicitly named file is taken whatever its extension
    assert rel(found, tree) == ["notes.txt", "sub/y.tiff", "sub/z.jpeg", "sub/deeper/x.WEBP"]
    assert problems.items == []


def test_iter_inputs_globs(tree: Path) -> None:
    problems = Problems()
    found = list(iter_inputs([str(tree / "*")], IMAGE_EXTENSIONS, problems))
    # a glob is filtered by extension; a folder it matches is walked
    assert rel(found, tree) == ["A.JPG", "b.jpg", "c.Png", "sub/y.tiff", "sub/z.jpeg",
                                "sub/deeper/x.WEBP"]
    recursive = list(iter_inputs([str(tree / "**" / "*.jpeg")], IMAGE_EXTENSIONS, problems))
    assert rel(recursive, tree) == ["sub/z.jpeg"]
    only_jpg = list(iter_inputs([str(tree / "*")], parse_extensions("jpg"), problems))
    assert rel(only_jpg, tree) == ["A.JPG", "b.jpg"]
    assert problems.items == []


def test_iter_inputs_glob_without_match_reported(tree: Path) -> None:
    problems = Problems()
    pattern = str(tree / "*.nothing")
    assert list(iter_inputs([pattern], IMAGE_EXTENSIONS, problems)) == []
    assert len(problems.items) == 1
    assert problems.items[0][0] == pattern
    assert "pattern" in problems.items[0][1]


def test_iter_inputs_stdin(tree: Path) -> None:
    problems = Problems()
    lines = [f"{tree / 'b.jpg'}\n", "\n", f"{tree / 'notes.txt'}\r\n", f"{tree / 'sub'}\n",
             f"{tree / 'gone.jpg'}\n"]
    found = list(iter_inputs(["-"], IMAGE_EXTENSIONS, problems, stdin=lines))
    assert rel(found, tree) == ["b.jpg", "notes.txt", "sub/y.tiff", "sub/z.jpeg",
                                "sub/deeper/x.WEBP"]
    assert problems.items == [(str(tree / "gone.jpg"), "no such file or folder")]


def test_iter_inputs_duplicates_once(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    inputs = ["b.jpg", str(tree / "b.jpg"), "./b.jpg", "sub/../b.jpg", ".", "-"]
    found = list(iter_inputs(inputs, IMAGE_EXTENSIONS, stdin=["b.jpg\n", "c.Png\n"]))
    keys = [os.path.abspath(p) for p in found]
    assert len(keys) == len(set(keys))
    assert keys[0] == str(tree / "b.jpg")
    assert sorted(keys) == sorted(str(tree / r) for r in (
        "A.JPG", "b.jpg", "c.Png", "sub/y.tiff", "sub/z.jpeg", "sub/deeper/x.WEBP"))


def test_iter_inputs_missing_path_reported(tree: Path) -> None:
    problems = Problems()
    missing = str(tree / "no-such-folder")
    found = list(iter_inputs([missing, str(tree / "b.jpg")], IMAGE_EXTENSIONS, problems))
    assert rel(found, tree) == ["b.jpg"]  # the walk goes on
    assert problems.items == [(missing, "no such file or folder")]


def test_iter_inputs_default_problem_handler_is_silent(tree: Path) -> None:
    assert list(iter_inputs([str(tree / "missing.jpg")])) == []


def test_a_symlink_loop_is_not_walked_and_no_file_is_missed(tree: Path) -> None:
    """A link back up the tree leads to files the walk reads anyway: nothing to report
    (an error would read as a file that could not be read), and the walk ends."""
    os.symlink(tree, tree / "sub" / "loop")
    problems = Problems()
    found = list(walk_folder(tree, IMAGE_EXTENSIONS, problems))
    assert rel(found, tree) == ["A.JPG", "b.jpg", "c.Png", "sub/y.tiff", "sub/z.jpeg",
                                "sub/deeper/x.WEBP"]
    assert problems.items == []
    assert len(list(iter_inputs([str(tree)], IMAGE_EXTENSIONS, problems))) == 6
    assert problems.items == []


def test_symlinked_folders_are_not_walked_and_outside_ones_reported(
        tree: Path, tmp_path: Path) -> None:
    """Linked files are read wherever they point (a folder of links is a way to build
    a set); a linked folder inside the input folder is not walked (its files are read
    under their own names), and one leading out of it (in a mounted evidence image,
    onto the analyst's own machine) is reported."""
    outside = tmp_path / "outside"
    touch(outside / "o.jpg")
    os.symlink(outside, tree / "linked")
    os.symlink(outside / "o.jpg", tree / "out.jpg")
    os.symlink(tree / "b.jpg", tree / "alias.jpg")
    (tree / "links").mkdir()
    os.symlink(tree / "sub" / "deeper", tree / "links" / "deeper")
    problems = Problems()
    found = rel(walk_folder(tree, IMAGE_EXTENSIONS, problems), tree)
    assert "alias.jpg" in found and "out.jpg" in found
    assert not any(name.startswith("linked") for name in found)
    assert "sub/deeper/x.WEBP" in found and not any(n.startswith("links/") for n in found)
    assert [Path(p).name for p, _ in problems.items] == ["linked"]
    assert "symlinked folder leads outside the input folder" in problems.items[0][1]


def test_a_symlink_named_explicitly_is_followed(tree: Path, tmp_path: Path) -> None:
    """The user asked for it: a link given as an input is read, and a linked folder
    given as an input is walked, whatever it points to."""
    outside = tmp_path / "outside"
    touch(outside / "o.jpg")
    os.symlink(outside, tmp_path / "case")
    assert rel(iter_inputs([str(tmp_path / "case")]), tmp_path / "case") == ["o.jpg"]


def test_searched_folders_are_reported(tree: Path) -> None:
    """Folders named, listed on stdin, or searched by a glob: outputs stay out of them."""
    searched: list[Path] = []
    list(iter_inputs([str(tree / "sub"), str(tree / "*.jpg"), "-", str(tree / "b.jpg")],
                     stdin=[str(tree / "empty") + "\n"], on_folder=searched.append))
    assert searched == [tree / "sub", tree, tree / "empty"]


@pytest.mark.parametrize(("pattern", "root"), [
    ("ev/*.jpg", "ev"), ("ev/*/x.jpg", "ev"), ("*.jpg", "."), ("/a/b/**/*.png", "/a/b"),
    ("ev/[ab].jpg", "ev")])
def test_glob_root(pattern: str, root: str) -> None:
    assert glob_root(pattern) == Path(root)


def test_a_name_too_long_is_a_problem_not_a_crash(tree: Path) -> None:
    problems = Problems()
    long_name = str(tree / ("R" * 300 + ".jpg"))
    assert rel(iter_inputs([long_name, str(tree / "b.jpg")], IMAGE_EXTENSIONS, problems),
               tree) == ["b.jpg"]
    assert problems.items == [(long_name, "cannot read: File name too long")]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads folders whatever their permissions")
def test_unreadable_folder_reported(tree: Path) -> None:
    locked = tree / "sub"
    locked.chmod(0)
    try:
        problems = Problems()
        found = list(iter_inputs([str(tree)], IMAGE_EXTENSIONS, problems))
    finally:
        locked.chmod(0o755)
    assert rel(found, tree) == ["A.JPG", "b.jpg", "c.Png"]
    assert len(problems.items) == 1
    assert Path(problems.items[0][0]) == locked
    assert "cannot read folder" in problems.items[0][1]


def test_unreadable_folder_reported_simulated(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same as above, with the permission error simulated (works as root too)."""
    locked = tree / "sub"
    real_scandir = os.scandir

    def scandir(path=".", *args):
        if os.path.realpath(path) == str(locked.resolve()):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    problems = Problems()
    found = list(iter_inputs([str(tree)], IMAGE_EXTENSIONS, problems))
    assert rel(found, tree) == ["A.JPG", "b.jpg", "c.Png"]
    assert problems.items == [(str(locked), "cannot read folder: Permission denied")]
