"""The faces pretext (``train --faces``): faces found once and cached, the dataset
of original and manipulated face crops, the five ranking heads and their
validation, and the command end to end with ``--resume``.

The synthetic photos are made here with EXIF from several cameras; ``--aligned``
makes each whole image one face, so no real face is needed. One test looks for
faces in real photos of ``../shared/data`` and skips cleanly without it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, write_image, write_photo_folder
from helpers_images import invoke
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn
from typer.testing import CliRunner

from aigdetect import face_data
from aigdetect.checkpoint import FACE_HEADS, FACE_TAGS, FACES, ORIGINAL, load_model
from aigdetect.cli import EXIT_USAGE
from aigdetect.dataset import Photo, load_labels
from aigdetect.detectors import EXTRACTOR_FILE, default_model_dir
from aigdetect.exif import ORDINAL_TAGS
from aigdetect.face_data import FaceDataset, detect_faces, landmark_crops
from aigdetect.face_training import FaceTask, FaceTrainConfig
from aigdetect.faces import Landmarks, face_crop
from aigdetect.patches import load_image

#: 2 steps of 4 faces x 2 patches on the CPU; every image is one face.
FAST = ["--max-steps", "2", "--epochs", "2", "--batch-size", "4", "--patches", "2",
        "--workers", "0", "--val-fraction", "0.4", "--device", "cpu", "--aligned"]


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 JPEGs from 4 cameras with varied ISO, aperture, exposure and focal length,
    plus one JPEG without EXIF (its face trains the 'original' head only)."""
    folder = write_photo_folder(tmp_path_factory.mktemp("faces") / "photos")
    write_image(folder / "no_exif.jpg", seed=99)
    return folder


@pytest.fixture(scope="module")
def photos(face_folder: Path) -> list[Photo]:
    return load_labels(sorted(face_folder.rglob("*.jpg")), None)[0]


@pytest.fixture(scope="module")
def faces_run(runner: CliRunner, face_folder: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("faces_run")
    output = work / "faces.pt"
    result = invoke(runner, ["train", "--faces", face_folder, "-o", output, *FAST,
                             "--head-weight", "original=2", "--debug-dir", work / "debug"])
    return {"result": result, "output": output, "work": work}


# ---------------------------------------------------------------------------
# the command end to end
# ---------------------------------------------------------------------------

def test_train_faces_writes_a_faces_checkpoint(faces_run: dict[str, Any]) -> None:
    result = faces_run["result"]
    assert result.exit_code == 0, result.stderr
    assert "Found 13 faces in 13 of 13 photos" in result.stderr
    assert "1 of these faces come from photos without usable EXIF" in result.stderr
    model, meta = load_model(faces_run["output"], task=FACES)
    assert meta.task == FACES and meta.step == 2
    assert meta.ordinal_tags == list(FACE_HEADS) and set(FACE_TAGS) <= set(ORDINAL_TAGS)
    assert set(model.heads.ranking) == set(FACE_HEADS)
    assert len(model.heads.categorical) == 0
    assert meta.training["train_faces"] + meta.training["val_faces"] == 13
    assert meta.training["aligned"] is True


def test_train_faces_logs_every_head_and_the_original_auc(faces_run: dict[str, Any]) -> None:
    log = [json.loads(line) for line in
           faces_run["output"].with_name("faces.pt.log.jsonl").read_text().splitlines()]
    last = log[-1]
    assert set(last["train_loss"]) == {*FACE_HEADS, "total"}
    assert last["loss_weights"] == {**dict.fromkeys(FACE_TAGS, 1.0), ORIGINAL: 2.0}
    original = last["validation"][ORIGINAL]
    assert 0.0 <= original["concordance"] <= 1.0 and original["chance"] == 0.5
    assert last["validation_score"] is not None


def test_train_faces_caches_faces_and_writes_debug_sheets(faces_run: dict[str, Any]) -> None:
    cache = json.loads(faces_run["output"].with_name("faces.pt.faces.json").read_text())
    assert cache["aligned"] is True and len(cache["entries"]) == 13
    sheets = sorted((faces_run["work"] / "debug").glob("*.png"))
    assert len(sheets) == 8


def test_train_faces_resumes(runner: CliRunner, face_folder: Path,
                             faces_run: dict[str, Any]) -> None:
    output = faces_run["work"] / "resumed.pt"
    shutil.copy(faces_run["output"], output)
    fast = [*FAST]
    fast[fast.index("--max-steps") + 1] = "3"
    result = invoke(runner, ["train", "--faces", face_folder, "-o", output, *fast, "--resume"])
    assert result.exit_code == 0, result.stderr
    assert "Resuming" in result.stderr
    assert load_model(output, task=FACES)[1].step == 3


def test_faces_resume_refuses_a_pretext_checkpoint(runner: CliRunner, face_folder: Path,
                                                   tmp_path: Path) -> None:
    output = tmp_path / "pretext.pt"
    first = invoke(runner, ["train", face_folder, "-o", output, *FAST[:-1], "--max-steps", "1"])
    assert first.exit_code == 0, first.stderr
    result = invoke(runner, ["train", "--faces", face_folder, "-o", output, *FAST, "--resume"])
    assert result.exit_code == EXIT_USAGE
    said = " ".join(result.stderr.split())
    assert "a pretext checkpoint, where a faces one is needed" in said
    assert "continue it with neither --binary nor --faces" in said


@pytest.mark.parametrize("args, message", [
    (["--faces", "--binary", "PHOTOS"], "--faces and --binary"),
    (["--aligned", "PHOTOS"], "apply to --faces only"),
    (["--faces", "--aligned", "PHOTOS", "--debug-dir", "PHOTOS/debug"], "inside the photos"),
    (["--faces", "PHOTOS"], "found 0 face(s)"),  # noise: no face without --aligned
])
def test_train_faces_usage_errors(runner: CliRunner, tmp_path: Path, args: list[str],
                                  message: str) -> None:
    photos = tmp_path / "PHOTOS"
    write_image(photos / "a.jpg", seed=1)
    write_image(photos / "b.jpg", seed=2)
    args = [a.replace("PHOTOS", str(photos)) for a in args]
    result = invoke(runner, ["train", *args, "-o", tmp_path / "m.pt", "--workers", "0",
                             "--device", "cpu", "--max-steps", "1"])
    assert result.exit_code == EXIT_USAGE
    assert message in " ".join(result.stderr.split())
    assert not (photos / "debug").exists()


# ---------------------------------------------------------------------------
# faces, cache and dataset
# ---------------------------------------------------------------------------

def test_face_cache_is_reused_and_a_changed_file_is_searched_again(
        photos: list[Photo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "faces.json"
    first, _ = detect_faces(photos, cache, aligned=True)
    searched: list[Path] = []
    search = face_data._search
    monkeypatch.setattr(face_data, "_search",
                        lambda path, aligned: searched.append(path) or search(path, aligned))
    again, _ = detect_faces(photos, cache, aligned=True)
    assert again == first and searched == []
    changed = Path(photos[0].path)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    detect_faces(photos, cache, aligned=True)
    assert searched == [changed]
    detect_faces(photos, cache, aligned=False)  # other settings: every photo again
    assert len(searched) == 1 + len(photos)


def _inside(patch: np.ndarray, crop: np.ndarray) -> bool:
    """Whether a (3, P, P) patch is a window of the H x W x 3 ``crop``."""
    window = patch.transpose(1, 2, 0)
    windows = sliding_window_view(crop, window.shape)
    return bool((windows == window).all(axis=(-3, -2, -1)).any())


def test_dataset_serves_originals_and_manipulations_cut_from_the_crop(
        photos: list[Photo]) -> None:
    samples, _ = detect_faces(photos, None, aligned=True)
    dataset = FaceDataset(samples, patches=3, patch_size=16, train=True, seed=0)
    items = [dataset.item(i) for i in range(len(dataset))]
    assert {item.manipulation is None for item in items} == {True, False}
    for item in items:
        pixels = load_image(item.sample.photo.path).pixels
        original = face_crop(pixels, item.sample.face)
        assert item.crop.shape == original.shape
        assert (item.manipulation is None) == np.array_equal(item.crop, original)
        assert item.patches.shape == (3, 3, 16, 16) and item.patches.dtype == np.uint8
        assert all(_inside(patch, item.crop) for patch in item.patches)


def test_three_patches_lie_on_the_eyes_and_the_mouth_for_both_classes() -> None:
    """Random patches of a large face often missed a flipped mouth or eye, so a face
    labelled manipulated was shown untouched pixels; every face, original or not,
    now gets a patch about each eye and the mouth (jittered, clipped to the crop)."""
    ys, xs = np.mgrid[0:400, 0:360]  # each pixel says where it is: y, x (mod 256), high bits
    crop = np.stack([ys % 256, xs % 256, ys // 256 * 2 + xs // 256], -1).astype(np.uint8)
    landmarks = Landmarks((120.0, 150.0), (240.0, 150.0), (180.0, 395.0), (40, 60, 280, 320))
    rng = np.random.default_rng(1)
    for _ in range(20):
        patches = landmark_crops(crop, landmarks, 3, 64, rng)
        assert patches.shape == (3, 3, 64, 64)
        for patch, (x, y) in zip(patches, (landmarks.left_eye, landmarks.right_eye,
                                           landmarks.mouth), strict=True):
            low_y, low_x, high = (int(v) for v in patch[:, 0, 0])
            top, left = low_y + 256 * (high // 2), low_x + 256 * (high % 2)
            assert np.array_equal(patch.transpose(1, 2, 0), crop[top:top + 64, left:left + 64])
            assert left <= x < left + 64 and top <= y < top + 64  # the feature is in it
    assert landmark_crops(crop[:40], landmarks, 3, 64, rng).shape == (0, 3, 64, 64)


def test_dataset_targets_mask_unknown_exif(photos: list[Photo]) -> None:
    samples, _ = detect_faces(photos, None, aligned=True)
    dataset = FaceDataset(samples, patches=2, patch_size=16, train=True)
    for index, sample in enumerate(samples):
        patches, targets, attempt = dataset[index]
        item = dataset.item(index)
        assert patches.shape == (2, 3, 16, 16) and attempt == 0
        assert targets[-1].item() == float(item.manipulation is None)
        known = [getattr(sample.photo.labels, tag) for tag in FACE_TAGS]
        for value, target in zip(known, targets[:-1].tolist(), strict=True):
            assert (value is None and np.isnan(target)) or target == pytest.approx(value)
    assert any(np.isnan(dataset[i][1][0].item()) for i in range(len(samples)))  # no_exif.jpg


def test_dataset_is_deterministic_and_validation_fixed_across_epochs(
        photos: list[Photo]) -> None:
    samples, _ = detect_faces(photos, None, aligned=True)
    train = FaceDataset(samples, patches=2, patch_size=16, train=True, seed=3)
    val = FaceDataset(samples, patches=2, patch_size=16, train=False, seed=3)
    first = [(train.item(i).manipulation, val.item(i).manipulation) for i in range(len(samples))]
    assert first == [(train.item(i).manipulation, val.item(i).manipulation)
                     for i in range(len(samples))]
    before = [val[i][0] for i in range(len(samples))]
    train.set_epoch(1)
    val.set_epoch(1)
    assert [train.item(i).manipulation for i in range(len(samples))] != [m for m, _ in first]
    assert all(torch.equal(val[i][0], before[i]) for i in range(len(samples)))


class _Oracle(nn.Module):
    """Scores every head with the patches' first pixel: a stand-in network whose
    'original' score is exactly right when that pixel encodes the label."""

    def forward(self, patches: torch.Tensor):
        score = patches[:, 0, 0, 0, 0].float()
        return {}, dict.fromkeys(FACE_HEADS, score)


def test_validation_of_the_original_head_is_the_auc(tmp_path: Path) -> None:
    labels = [1.0, 0.0, 1.0, 0.0, 0.0]
    rows = []
    for label in labels:
        patches = torch.full((1, 3, 4, 4), int(label * 200), dtype=torch.uint8)
        targets = torch.tensor([float("nan")] * len(FACE_TAGS) + [label])
        rows.append((patches, targets, 0))
    task = FaceTask(FaceTrainConfig(output=tmp_path / "m.pt", photos=tmp_path))
    loader = torch.utils.data.DataLoader(rows, batch_size=2)
    metrics = task.validate(_Oracle(), loader, torch.device("cpu"))
    assert metrics == {ORIGINAL: {"concordance": 1.0, "chance": 0.5, "n": 6}}  # 2 x 3 pairs
    assert task.validation_score(metrics) == 0.5


# ---------------------------------------------------------------------------
# real photos (skipped without ../shared/data)
# ---------------------------------------------------------------------------

#: Small (512 px) ship_ok camera photos of people in the shared corpus.
REAL_PORTRAITS = (
    "photos/drewnoakes__metadata-extractor-images__jpg__Sony DSC-P52.jpg",
    "photos/drewnoakes__metadata-extractor-images__jpg__Issue 116.jpg",
)


def test_faces_are_found_in_real_camera_photos(tmp_path: Path) -> None:
    paths = [SHARED_DATA / name for name in REAL_PORTRAITS if (SHARED_DATA / name).is_file()]
    if not paths:
        pytest.skip(f"shared photos not available under {SHARED_DATA}")
    photos, _ = load_labels(paths, None)
    samples, unreadable = detect_faces(photos, tmp_path / "faces.json")
    assert not unreadable and samples
    item = FaceDataset(samples, patches=2, patch_size=32, train=True).item(0)
    assert item.patches.shape == (2, 3, 32, 32)
    assert item.crop.shape[0] >= 48


# ---------------------------------------------------------------------------
# --init: start from a camera-trained extractor
# ---------------------------------------------------------------------------

def test_init_starts_the_extractor_from_a_checkpoint_and_not_its_heads(
        face_folder: Path, tmp_path: Path) -> None:
    shipped = default_model_dir() / EXTRACTOR_FILE
    source, _ = load_model(shipped)
    config = FaceTrainConfig(photos=face_folder, output=tmp_path / "f.pt", init=shipped)
    model, _ = FaceTask(config).new_model()
    for name, value in source.extractor.state_dict().items():
        assert torch.equal(model.extractor.state_dict()[name], value), name
    assert set(model.heads.ranking) == set(FACE_HEADS)  # the faces heads, fresh
    fresh, _ = FaceTask(replace(config, init=None)).new_model()
    first = next(iter(source.extractor.state_dict()))
    assert not torch.equal(fresh.extractor.state_dict()[first],
                           source.extractor.state_dict()[first])


def test_init_through_the_command_line(runner: CliRunner, face_folder: Path,
                                       tmp_path: Path) -> None:
    shipped = default_model_dir() / EXTRACTOR_FILE
    output = tmp_path / "faces.pt"
    result = invoke(runner, ["train", "--faces", face_folder, "-o", output, *FAST,
                             "--init", shipped])
    assert result.exit_code == 0, result.stderr
    assert load_model(output, task=FACES)[1].training["init"] == str(shipped)
    smaller = invoke(runner, ["train", "--faces", face_folder, "-o", tmp_path / "s.pt", *FAST,
                              "--init", shipped, "--patch-size", "32"])
    assert smaller.exit_code == EXIT_USAGE
    assert "give --patch-size 64" in " ".join(smaller.stderr.split())
    assert list(tmp_path.glob("s.pt*")) == []  # refused before the data: no cache beside -o
    binary = invoke(runner, ["train", "--binary", "--real", face_folder, "--fake", face_folder,
                             "-o", tmp_path / "b.pt", "--init", shipped])
    assert binary.exit_code == EXIT_USAGE and "--binary starts fresh" in binary.stderr


def test_about_half_the_training_faces_are_manipulated(photos) -> None:
    """Originals and manipulated faces in equal shares over epochs, as in the paper."""
    samples, _ = detect_faces(photos, None, aligned=True)
    dataset = FaceDataset(samples, patches=1, patch_size=16, train=True, seed=0)
    originals = []
    for epoch in range(8):
        dataset.set_epoch(epoch)
        originals += [dataset.item(i).manipulation is None for i in range(len(samples))]
    assert 0.35 < np.mean(originals) < 0.65


class _ScoresPerHead(nn.Module):
    """A different score for each head, from the same pixels."""

    def forward(self, patches: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
        base = patches[:, 0, 0, 0, 0].float()
        return {}, {head: base * (k + 1) - k for k, head in enumerate(FACE_HEADS)}


def test_each_face_head_learns_from_its_own_target(tmp_path: Path) -> None:
    from aigdetect.losses import fidelity_ranking_loss
    task = FaceTask(FaceTrainConfig(output=tmp_path / "m.pt", photos=tmp_path))
    generator = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 255, (6, 1, 3, 4, 4), dtype=torch.uint8, generator=generator)
    targets = torch.randn(6, len(FACE_HEADS), generator=generator)
    losses = task.losses(_ScoresPerHead(), (patches, targets, None), torch.device("cpu"),
                         torch.autocast("cpu", enabled=False))
    _, scores = _ScoresPerHead()(patches)
    for i, head in enumerate(FACE_HEADS):
        assert torch.allclose(losses[head], fidelity_ranking_loss(scores[head], targets[:, i]))
