"""benchmarks/shared_splits.py: calibration photos are held out as whole groups."""

from __future__ import annotations

import pytest
from helpers_images import load_benchmark


def test_held_out_takes_whole_groups_within_the_share_and_is_seeded() -> None:
    splits = load_benchmark("shared_splits")
    rows = ([{"source_repo": "big"}] * 60 + [{"source_repo": "mid"}] * 15
            + [{"source_repo": "small"}] * 5 + [{"source_repo": "tiny"}] * 2)
    held = splits.held_out(rows, splits.source, 0.3, seed=0)
    count = sum(row["source_repo"] in held for row in rows)
    assert "big" not in held  # larger than the share: never held out
    assert 0 < count <= 0.3 * len(rows)
    assert held == splits.held_out(rows, splits.source, 0.3, seed=0)
    # whole groups fill the share as far as they fit: mid + small + tiny = 22 <= 24.6
    assert held == {"mid", "small", "tiny"} and count == 22


def test_camera_groups_photos_by_make_and_model_whatever_the_case() -> None:
    splits = load_benchmark("shared_splits")
    assert splits.camera({"Make": "Canon ", "Model": "EOS 5D"}) == \
        splits.camera({"Make": "canon", "Model": "eos 5d "})


def test_two_files_of_one_name_are_refused(tmp_path, monkeypatch) -> None:
    """Links are named after the file: a second IMG_0001.JPG would silently be left out."""
    splits = load_benchmark("shared_splits")
    monkeypatch.setattr(splits, "SHARED", tmp_path / "shared")
    rows = [{"path": "photos/a/IMG_0001.JPG"}, {"path": "photos/a/IMG_0002.JPG"}]
    splits.link_all(rows, tmp_path / "out")
    splits.link_all(rows, tmp_path / "out")  # a rerun finds its own links
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["IMG_0001.JPG",
                                                                    "IMG_0002.JPG"]
    with pytest.raises(SystemExit, match="would link two files"):
        splits.link_all([{"path": "photos/b/IMG_0001.JPG"}], tmp_path / "out")
