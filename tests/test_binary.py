"""The binary detector: distillation, scrambled patches, balanced and augmented data,
fusion; then train --binary, --resume, calibrate and scan --detector through the CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_image
from helpers_images import assert_scored_by, invoke, noise_jpeg, smooth_png, tree_snapshot
from PIL import Image
from typer.testing import CliRunner

from aigdetect import calibrating
from aigdetect import weights as shipped_weights
from aigdetect.binary_data import Augmentation, BinaryDataset, balanced_draw, split_for_validation
from aigdetect.calibrating import best_detector, cross_validated_auc, learn_fusion_weights
from aigdetect.calibration import Calibration
from aigdetect.checkpoint import BINARY, load_model, save_checkpoint
from aigdetect.cli import EXIT_USAGE
from aigdetect.detectors import (
    EXTRACTOR_FILE,
    DetectorError,
    DetectorFolder,
    FusedDetector,
    Judgement,
    fuse,
)
from aigdetect.files import file_sha256
from aigdetect.labelled import AI, REAL, LabelledFile, files_from_csv
from aigdetect.losses import feature_distillation_loss
from aigdetect.network import BinaryClassifier, ExifExtractor, ExtractorConfig, stage_features

SMALL = ExtractorConfig(width=8, patch_size=32)
TEACHER = Path(shipped_weights.__file__).parent / EXTRACTOR_FILE


def test_distillation_is_zero_for_the_same_network_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    patches = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    teacher, other = ExifExtractor(SMALL).eval(), ExifExtractor(SMALL).eval()
    same = feature_distillation_loss(stage_features(teacher, patches),
                                     stage_features(teacher, patches))
    different = feature_distillation_loss(stage_features(other, patches),
                                          stage_features(teacher, patches))
    assert same.item() == 0.0
    assert different.item() > 0.0
    # every stage counts: the sum of each stage's mean squared difference
    stages = [torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(5)]
    shifted = [torch.full((2, 4), 1.0), torch.zeros(2, 3), torch.full((5,), 2.0)]
    assert feature_distillation_loss(shifted, stages).item() == pytest.approx(1.0 + 4.0)


def test_distillation_gradient_reaches_only_the_student() -> None:
    patches = torch.randint(0, 256, (1, 2, 3, 32, 32), dtype=torch.uint8)
    student, teacher = BinaryClassifier(SMALL), ExifExtractor(SMALL)
    _, features = student(patches)
    feature_distillation_loss(features, stage_features(teacher, patches)).backward()
    assert student.extractor.encoder.stage1[0][0].weight.grad is not None
    assert teacher.encoder.stage1[0][0].weight.grad is None


def test_scrambled_patches_give_the_same_logits_in_any_order() -> None:
    """No positions: the patch set is unordered, and every patch counts."""
    torch.manual_seed(0)
    model = BinaryClassifier(SMALL).eval()
    patches = torch.randint(0, 256, (1, 6, 3, 32, 32), dtype=torch.uint8)
    shuffled = patches[:, torch.randperm(6)]
    with torch.no_grad():
        logits, features = model(patches)
        shuffled_logits, _ = model(shuffled)
        dropped, _ = model(patches[:, :5])
    assert torch.allclose(logits, shuffled_logits, atol=1e-5)
    assert features[-1].shape[1] == 6  # one vector per patch: none lost
    assert not torch.allclose(logits, dropped, atol=1e-6)


def test_balanced_draw_follows_square_root_of_group_size() -> None:
    files = ([LabelledFile(f"big{i}", AI, "big") for i in range(400)]
             + [LabelledFile(f"small{i}", AI, "small") for i in range(4)])
    draws = balanced_draw(files, 20_000, np.random.default_rng(0))
    share_small = np.mean([files[i].group == "small" for i in draws])
    assert share_small == pytest.approx(2 / (20 + 2), abs=0.01)  # sqrt(4) / (sqrt(400) + 2)


def test_augmentation_ignores_the_label_and_keeps_patches_native() -> None:
    """Both classes go through the same random processing for the same draw."""
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    augment = Augmentation(downscale_p=0.0, upscale_p=0.0, blur_p=0.0, sharpen_p=0.0,
                           jpeg_p=1.0, region=256)
    first = augment(pixels, np.random.default_rng(5), 64)
    again = augment(pixels, np.random.default_rng(5), 64)
    assert np.array_equal(first, again)
    assert first.shape == (256, 256, 3)  # a native-resolution region, never resized
    assert not np.array_equal(first, pixels[:256, :256])  # JPEG changed the pixels
    shrunk = Augmentation(downscale_p=1.0, downscale_min=0.5, blur_p=0.0, jpeg_p=0.0)(
        pixels, np.random.default_rng(1), 64)
    assert shrunk.shape[0] < 300 and min(shrunk.shape[:2]) >= 64
    enlarged = Augmentation(downscale_p=0.0, upscale_p=1.0, upscale_max=2.0, blur_p=0.0,
                            sharpen_p=1.0, jpeg_p=0.0)(pixels, np.random.default_rng(2), 64)
    assert enlarged.shape[0] > 300 and enlarged.shape[1] > 400  # region of all 300 x 400


def test_augmentation_can_pass_an_image_through_webp() -> None:
    """WebP is applied to both classes alike, so that its smoothing cannot read as AI."""
    smooth = np.repeat(np.repeat(np.random.default_rng(3).integers(0, 256, (16, 16, 3)), 16, 0),
                       16, 1).astype(np.uint8)
    only_webp = Augmentation(webp_p=1.0, webp_quality=(50, 50), downscale_p=0.0, upscale_p=0.0,
                             blur_p=0.0, sharpen_p=0.0, jpeg_p=0.0)
    out = only_webp(smooth, np.random.default_rng(0), 64)
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="WEBP", quality=50)
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.array_equal(out, expected)  # exactly one WebP round trip at the drawn quality
    assert not np.array_equal(out, smooth)
    never = Augmentation(webp_p=0.0, downscale_p=0.0, upscale_p=0.0, blur_p=0.0,
                         sharpen_p=0.0, jpeg_p=0.0)
    assert np.array_equal(never(smooth, np.random.default_rng(0), 64), smooth)


def test_dataset_epoch_is_class_balanced(tmp_path: Path) -> None:
    files = [LabelledFile(str(noise_jpeg(tmp_path / f"r{i}.jpg", seed=i)), REAL, "real")
             for i in range(4)]
    files += [LabelledFile(str(smooth_png(tmp_path / f"a{i}.png", seed=i)), AI, f"g{i % 3}")
              for i in range(9)]
    dataset = BinaryDataset(files, patches=3, patch_size=32, train=True, seed=0)
    assert len(dataset) == 8  # as many AI images per epoch as real ones
    assert sum(f.label for f in dataset.epoch_files) == 4
    patches, label, attempts = dataset[5]
    assert patches.shape == (3, 3, 32, 32) and patches.dtype == torch.uint8
    assert label == AI and attempts == 0
    validation = BinaryDataset(files, patches=3, patch_size=32, train=False)
    assert len(validation) == len(files)
    assert torch.equal(validation[0][0], validation[0][0])  # deterministic


def test_dataset_augments_both_classes_and_keeps_labels(tmp_path: Path) -> None:
    """Every training item goes through the one augmentation, whatever its class; an
    undecodable file is replaced by another of its own class, never of the other."""
    files = [LabelledFile(str(noise_jpeg(tmp_path / f"r{i}.jpg", seed=i)), REAL, "real")
             for i in range(3)]
    files += [LabelledFile(str(smooth_png(tmp_path / f"a{i}.png", seed=i)), AI, "gen")
              for i in range(3)]
    seen: list[tuple[int, int]] = []

    def augmentation(pixels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        seen.append(pixels.shape[:2])
        return pixels

    dataset = BinaryDataset(files, patches=2, patch_size=32, train=True, seed=0,
                            augmentation=augmentation)
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert len(seen) == len(dataset) and set(labels) == {REAL, AI}
    for ai_file in (f for f in files if f.label == AI):
        Path(ai_file.path).write_bytes(b"")  # no AI image can be decoded any more
    ai_index = next(i for i, f in enumerate(dataset.epoch_files) if f.label == AI)
    with pytest.raises(RuntimeError, match="no ai image"):
        dataset[ai_index]


def test_csv_groups_and_validation_split(tmp_path: Path) -> None:
    labels = tmp_path / "train.csv"
    labels.write_text("path,label,group\na.jpg,real,camera\nb.png,ai,sdxl\nc.png,1,\n")
    files = files_from_csv(labels)
    assert [(f.label, f.group) for f in files] == [
        (REAL, "train.csv:camera"), (AI, "train.csv:sdxl"), (AI, "train.csv:ai")]
    assert files[0].path == str(tmp_path / "a.jpg")
    ai = [LabelledFile(f"x{i}.png", AI, "sdxl") for i in range(20)]
    train, val = split_for_validation(ai, 0.25, seed=0)
    assert len(val) == 5 and not {f.path for f in train} & {f.path for f in val}


def test_a_held_out_camera_is_held_out_in_every_group(tmp_path: Path) -> None:
    """The same camera in two --real folders: held out in one, trained in the other, it
    would validate what it trained."""
    files = []
    for group, cameras in (("phones", "ABCD"), ("edited", "BEFG")):
        for camera in cameras:
            for i in range(2):
                path = write_image(tmp_path / group / f"{camera}{i}.jpg", size=(32, 32),
                                   exif={"Make": "Acme", "Model": f"Cam {camera}"})
                files.append(LabelledFile(str(path), REAL, group))
    for seed in range(8):
        train, val = split_for_validation(files, 0.34, seed)
        assert val and len(train) + len(val) == len(files)
        cameras = [{Path(f.path).name[0] for f in side} for side in (train, val)]
        assert not cameras[0] & cameras[1], seed


class _Constant:
    """A stand-in component whose raw score is set by hand."""

    def __init__(self, name: str, calibration: Calibration) -> None:
        self.name, self.calibration, self.value = name, calibration, 0.0

    def judge(self, tiles: np.ndarray, threshold: float | None = None) -> Judgement:
        c = self.calibration
        return Judgement(self.value, c.suspicion(self.value), c.threshold,
                         c.verdict(self.value), c.percentile(self.value))


def test_fused_score_rises_with_each_component() -> None:
    rng = np.random.default_rng(0)
    a = _Constant("oneclass", Calibration.fit(rng.normal(0, 10, 200), 0.05))
    b = _Constant("binary", Calibration.fit(rng.normal(-3, 1, 200), 0.05))
    fused = FusedDetector([a, b], Calibration.fit(rng.normal(0, 1, 200), 0.05))
    for moving, fixed in ((a, b), (b, a)):
        fixed.value = 0.0
        scores = []
        for value in np.linspace(-20, 20, 41):
            moving.value = value
            scores.append(fused.judge(np.zeros(1)).raw)
        assert np.all(np.diff(scores) > 0)
    judgement = fused.judge(np.zeros(1))
    assert set(judgement.components) == {"oneclass", "binary"}


def test_weighted_fusion_follows_the_component_that_separates() -> None:
    rng = np.random.default_rng(1)
    real = {"oneclass": list(rng.normal(0, 1, 200)), "binary": list(rng.normal(0, 1, 200))}
    # on these AI images the binary score rises, the one-class score falls
    fake = {"oneclass": list(rng.normal(-1, 1, 60)), "binary": list(rng.normal(3, 1, 60))}
    calibrations = {name: Calibration.fit(np.array(values), 0.05) for name, values in real.items()}
    weights, validation = learn_fusion_weights(calibrations, real, fake)
    assert weights == {"oneclass": 0.0, "binary": 1.0}  # switched off, never inverted
    assert validation["auc"]["binary"] > 0.9
    assert validation["auc"]["fused"] == pytest.approx(validation["auc"]["binary"])
    # two useful components share the weight; fuse() follows it
    fake["oneclass"] = list(rng.normal(2, 1, 60))
    weights, _ = learn_fusion_weights(calibrations, real, fake)
    assert 0 < weights["oneclass"] < 1 and sum(weights.values()) == pytest.approx(1.0)
    parts = [(calibrations["oneclass"], 5.0), (calibrations["binary"], 0.0)]
    assert fuse(parts, [1.0, 0.0]) > fuse(parts, [0.0, 1.0])
    with pytest.raises(DetectorError, match="dozens"):
        learn_fusion_weights(calibrations, real, {"oneclass": [1.0], "binary": [1.0]})


def test_a_dropped_fusion_component_does_not_skew_the_others() -> None:
    """A component with a negative coefficient is dropped and the others refitted:
    here it is a noisy copy of the first with the sign of the label taken out, so the
    joint fit inflates the first to cancel it, and clipping alone would keep that."""
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 300)
    first = labels * 1.5 + rng.normal(size=600)
    second = labels * 1.0 + rng.normal(size=600)
    twin = first - labels * 2.0 + rng.normal(scale=0.3, size=600)
    weights = calibrating.learned_weights(np.column_stack([first, second, twin]), labels)
    expected = calibrating.learned_weights(np.column_stack([first, second]), labels)
    assert weights[2] == 0.0
    assert weights[:2] == pytest.approx(expected)
    joint = calibrating.LogisticRegression().fit(
        np.column_stack([first, second, twin]), labels).coef_[0]
    assert joint[2] < 0 and joint[0] / joint[1] > 1.5 * expected[0] / expected[1]


def test_an_images_processed_copies_share_a_cross_validation_fold(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """calibrate scores every image as-is, matched and web: with its copies in other
    folds, an image's own scores would teach the weights that score it."""
    seen: list[tuple[set, set]] = []

    class Recording(calibrating.StratifiedGroupKFold):
        def split(self, x, y=None, groups=None):
            for train, test in super().split(x, y, groups):
                seen.append((set(groups[train]), set(groups[test])))
                yield train, test

    monkeypatch.setattr(calibrating, "StratifiedGroupKFold", Recording)
    rng = np.random.default_rng(3)
    features = np.repeat(rng.normal(size=(60, 2)), 3, axis=0)  # 60 images x 3 processings
    labels = np.repeat(np.arange(60) % 2, 3)
    images = np.repeat([f"image{i}" for i in range(60)], 3)
    assert 0 <= cross_validated_auc(features, labels, images) <= 1
    assert len(seen) == 5 and all(not (train & test) for train, test in seen)


def test_fusion_is_judged_out_of_sample_and_the_best_ranker_is_the_default() -> None:
    """With one useful component and one of noise, weights fitted on the validation
    images flatter the fusion there; scored with weights learned on other folds it
    does not beat the useful component, which becomes the default."""
    rng = np.random.default_rng(2)
    real = {"oneclass": list(rng.normal(0, 1, 100)), "residual": list(rng.normal(0, 1, 100))}
    fake = {"oneclass": list(rng.normal(0.3, 1, 40)), "residual": list(rng.normal(1.5, 1, 40))}
    calibrations = {name: Calibration.fit(np.array(values), 0.05) for name, values in real.items()}
    _, validation = learn_fusion_weights(calibrations, real, fake)
    auc = validation["auc"]
    assert auc["fused_cross_validated"] < auc["fused"]  # in-sample weights flatter it
    offered = ["oneclass", "residual", "fused"]
    expected = "fused" if auc["fused_cross_validated"] >= auc["residual"] else "residual"
    assert best_detector(validation, offered) == expected
    # a tie goes to the fusion; without held-out AI images the fusion is the default
    tied = {"auc": {"oneclass": 0.5, "residual": 0.9, "fused": 0.95,
                    "fused_cross_validated": 0.9}}
    assert best_detector(tied, offered) == "fused"
    tied["auc"]["residual"] = 0.91
    assert best_detector(tied, offered) == "residual"
    assert best_detector(None, offered) == "fused"
    assert best_detector(None, ["oneclass"]) == "oneclass"


# ---------------------------------------------------------------------------
# end to end through the CLI
# ---------------------------------------------------------------------------

TRAIN_FAST = ["--batch-size", "4", "--patches", "2", "--workers", "0", "--epochs", "3",
              "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def binary_run(runner: CliRunner, session_photo_folder: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("binary")
    fake = work / "fake"
    for i in range(8):
        smooth_png(fake / f"f{i}.png", seed=300 + i)
    output = work / "binary.pt"
    result = invoke(runner, ["train", "--binary", "--real", session_photo_folder, "--fake",
                             fake, "-o", output, "--max-steps", "2", *TRAIN_FAST])
    return {"result": result, "output": output, "work": work, "fake": fake,
            "real": session_photo_folder}


def test_train_binary_writes_a_binary_checkpoint(binary_run: dict[str, Any]) -> None:
    result = binary_run["result"]
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "distillation alpha 0.05" in result.stderr
    model, meta = load_model(binary_run["output"], task=BINARY)
    assert meta.task == BINARY and meta.step == 2
    assert isinstance(model, BinaryClassifier)
    assert set(meta.training["train_files"]) and meta.training["teacher_sha256"]
    # the files it trained on, by content: calibrate and evaluate keep them out
    trained = set(meta.training["train_sha256"])
    assert len(trained) == sum(meta.training["train_files"].values())
    inputs = {file_sha256(f) for f in [*binary_run["real"].rglob("*"),
                                       *binary_run["fake"].iterdir()] if f.is_file()}
    assert trained < inputs
    log = [json.loads(line) for line in
           binary_run["output"].with_name("binary.pt.log.jsonl").read_text().splitlines()]
    assert {"ce", "distill"} <= set(log[-1]["train_loss"])
    assert log[-1]["loss_weights"] == {"ce": 1.0, "distill": 0.05}
    assert "auc" in log[-1]["validation"]


def test_train_binary_resumes(runner: CliRunner, binary_run: dict[str, Any]) -> None:
    output = binary_run["work"] / "resumed.pt"
    shutil.copy(binary_run["output"], output)
    result = invoke(runner, ["train", "--binary", "--real", binary_run["real"], "--fake",
                             binary_run["fake"], "-o", output, "--max-steps", "3", "--resume",
                             *TRAIN_FAST])
    assert result.exit_code == 0, result.stderr
    assert "Resuming" in result.stderr
    _, meta = load_model(output)
    assert meta.step == 3
    payload = torch.load(output, weights_only=True)
    optimizer_state = payload["training_state"]["optimizer"]["state"]
    adam_steps = {float(s["step"]) for s in optimizer_state.values()}
    assert adam_steps == {3.0}  # the optimiser state was restored, not restarted
    # the one step taken continued from the checkpoint's weights: Adam moves each weight
    # by about the learning rate at most (a fresh network would differ far more)
    before = torch.load(binary_run["output"], weights_only=True)["model"]
    moved = max((payload["model"][k].float() - v.float()).abs().max().item()
                for k, v in before.items() if v.is_floating_point())
    assert 0 < moved <= 3 * meta.training["lr"]


def test_train_binary_csv_says_which_listed_files_are_missing(
        runner: CliRunner, binary_run: dict[str, Any], tmp_path: Path) -> None:
    rows = [f"{p},real" for p in sorted(binary_run["real"].rglob("*.jpg"))]
    rows += [f"{p},ai" for p in sorted(binary_run["fake"].rglob("*.png"))]
    rows.append(f"{tmp_path / 'gone' / 'moved.png'},ai")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    among_images = next(binary_run["real"].rglob("*.jpg")).parent / "b.pt"
    refused = invoke(runner, ["train", "--binary", "--csv", labels, "-o", among_images,
                              "--max-steps", "1", *TRAIN_FAST])
    assert refused.exit_code == 2 and "inside the input folder" in refused.stderr
    assert not among_images.exists()
    result = invoke(runner, ["train", "--binary", "--csv", labels, "-o", tmp_path / "b.pt",
                             "--max-steps", "1", *TRAIN_FAST])
    assert result.exit_code == 0, result.stderr
    assert "1 listed file(s) are missing or not images" in " ".join(result.stderr.split())


def test_train_binary_with_no_decodable_ai_image_is_a_usage_error(
        runner: CliRunner, binary_run: dict[str, Any], tmp_path: Path) -> None:
    """Junk named .png on the AI side: refused before training, not a traceback from a
    data-loading worker mid-epoch."""
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"j{i}.png").write_bytes(f"not an image {i}".encode())
    result = invoke(runner, ["train", "--binary", "--real", binary_run["real"], "--fake", junk,
                             "-o", tmp_path / "b.pt", "--max-steps", "1", *TRAIN_FAST])
    assert result.exit_code == 2
    assert "fewer than 2 AI" in result.stderr and not (tmp_path / "b.pt").exists()


def test_train_binary_without_distillation(runner: CliRunner, binary_run: dict[str, Any]) -> None:
    output = binary_run["work"] / "alpha0.pt"
    result = invoke(runner, ["train", "--binary", "--real", binary_run["real"], "--fake",
                             binary_run["fake"], "-o", output, "--max-steps", "1", "--alpha",
                             "0", *TRAIN_FAST])
    assert result.exit_code == 0, result.stderr
    log = json.loads(output.with_name("alpha0.pt.log.jsonl").read_text().splitlines()[-1])
    assert "distill" not in log["train_loss"]


def test_frozen_extractor_stays_the_teachers(runner: CliRunner,
                                             binary_run: dict[str, Any]) -> None:
    """--freeze-extractor trains the head only, also across --resume."""
    output = binary_run["work"] / "frozen.pt"
    common = ["train", "--binary", "--freeze-extractor", "--real", binary_run["real"],
              "--fake", binary_run["fake"], "-o", output, *TRAIN_FAST]
    first = invoke(runner, [*common, "--max-steps", "1"])
    assert first.exit_code == 0, first.stderr
    assert "head only" in first.stderr
    after_one, _ = load_model(output, task=BINARY)
    resumed = invoke(runner, [*common, "--max-steps", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.stderr
    model, meta = load_model(output, task=BINARY)
    teacher, _ = load_model(TEACHER)
    assert meta.step == 2
    for name, value in teacher.extractor.state_dict().items():
        assert torch.equal(model.extractor.state_dict()[name], value), name
    assert not torch.equal(model.head.weight, after_one.head.weight)  # the head did train


@pytest.mark.parametrize("args", [
    ["--binary"],                                   # no data
    ["--binary", "--fake", "."],                    # one class only
    ["--binary", "--real", ".", "PHOTOS"],          # a pretext argument with --binary
])
def test_train_binary_usage_errors(runner: CliRunner, tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "PHOTOS").mkdir()
    noise_jpeg(tmp_path / "x.jpg")
    args = [str(tmp_path / a) if a in (".", "PHOTOS") else a for a in args]
    result = invoke(runner, ["train", *args, "-o", tmp_path / "m.pt", "--workers", "0"])
    assert result.exit_code == EXIT_USAGE
    assert "error" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def calibrated(runner: CliRunner, binary_run: dict[str, Any]) -> dict[str, Any]:
    work = binary_run["work"]
    folder = work / "detector"
    fit = invoke(runner, ["fit-gmm", binary_run["real"], "-o", folder, "--extractor", TEACHER,
                          "--patches", "4", "--components", "1", "--pca-dim", "4",
                          "--workers", "0", "--no-cache"])
    assert fit.exit_code == 0, fit.stderr
    held_out = work / "held_out"
    for i in range(24):
        noise_jpeg(held_out / f"h{i}.jpg", seed=500 + i)
    result = invoke(runner, ["calibrate", folder, "--binary", binary_run["output"], "--real",
                             held_out, "--fpr", "0.1", "--workers", "0"])
    return {"result": result, "folder": folder}


def test_calibrate_refuses_images_the_binary_detector_trained_on(
    runner: CliRunner, calibrated: dict[str, Any], binary_run: dict[str, Any], tmp_path: Path
) -> None:
    """As --binary or already in the folder: thresholds set on its training images would
    promise fewer false alarms than new photos get."""
    folder = tmp_path / "again"
    shutil.copytree(calibrated["folder"], folder)
    before = tree_snapshot(folder)
    held_out = binary_run["work"] / "held_out"
    for extra in ([], ["--binary", binary_run["output"]]):
        result = invoke(runner, ["calibrate", folder, *extra, "--real", held_out, "--real",
                                 binary_run["real"], "--workers", "0"])
        assert result.exit_code == EXIT_USAGE
        assert "fitted on by the binary detector" in " ".join(result.stderr.split())
        assert tree_snapshot(folder) == before


def test_calibrate_with_held_out_ai_weights_the_fusion(
    runner: CliRunner, calibrated: dict[str, Any], binary_run: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import aigdetect.calibrating as calibrating
    folder = tmp_path / "weighted"
    shutil.copytree(calibrated["folder"], folder)
    held_out_ai = tmp_path / "held_out_ai"
    for i in range(12):
        smooth_png(held_out_ai / f"a{i}.png", seed=700 + i)
    web = tmp_path / "web_photos"  # a second kind of real photo, its own group
    for i in range(6):
        noise_jpeg(web / f"w{i}.jpg", seed=900 + i, quality=75)
    seen: dict[str, Any] = {}

    def spy(name: str) -> Any:
        real = getattr(calibrating, name)

        def recorded(*args: Any) -> Any:
            seen[name] = args
            return real(*args)
        return recorded

    for name in ("learn_fusion_weights", "best_detector"):
        monkeypatch.setattr(calibrating, name, spy(name))
    result = invoke(runner, ["calibrate", folder, "--real", binary_run["work"] / "held_out",
                             "--real", web, "--fake", held_out_ai, "--fpr", "0.1",
                             "--workers", "0"])
    assert result.exit_code == 0, result.stderr
    assert "fusion weights" in result.stderr
    # cross-validation folds by image (its three processed copies together), and the
    # default is chosen on that validation
    images = seen["learn_fusion_weights"][3]
    assert len(set(images)) == 24 + 6 + 12 and len(images) == 3 * (24 + 6 + 12)
    assert seen["best_detector"][0] is not None
    stored = json.loads((folder / "calibration.json").read_text())
    assert sorted(stored["group_sizes"].values()) == [6, 24]
    weights = stored["fusion_weights"]
    assert set(weights) == {"oneclass", "binary"} and sum(weights.values()) == pytest.approx(1)
    assert stored["fusion_validation"]["ai_images"] == 12
    # the default is the detector that ranks these AI images best
    aucs = dict(stored["fusion_validation"]["auc"])
    aucs["fused"] = aucs.pop("fused_cross_validated")
    default = json.loads((folder / "detector.json").read_text())["default"]
    assert aucs[default] == max(aucs.values())
    scan = invoke(runner, ["scan", held_out_ai / "a0.png", "--model", folder, "-f", "json",
                           "-q", "--workers", "0", "--detector", "fused"])
    record = json.loads(scan.stdout)["results"][0]
    parts = {name: Calibration.from_dict(stored["detectors"][name]) for name in weights}
    expected = sum(weights[name] * parts[name].standardise(record["components"][name]["raw_score"])
                   for name in weights)
    assert record["raw_score"] == pytest.approx(expected, abs=1e-3)


def test_calibrate_writes_thresholds_and_fused_default(calibrated: dict[str, Any]) -> None:
    result, folder = calibrated["result"], calibrated["folder"]
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((folder / "detector.json").read_text())
    assert manifest["default"] == "fused"
    stored = json.loads((folder / "calibration.json").read_text())
    assert set(stored["detectors"]) == {"oneclass", "binary", "fused"}
    assert stored["real_photos"] == 24 and stored["fpr"] == 0.1
    assert stored["processings"] == ["asis", "matched", "web"]
    reference = stored["pretext_reference"]  # for explain: where pixels and claims rank
    assert all(len(v) == 24 for v in reference["scores"].values())
    assert set(reference["values"]) == set(reference["scores"])
    for calibration in stored["detectors"].values():
        # every photo scored as it is and after each processing; the threshold holds
        # on each processing, and is set by the strictest
        groups = calibration["groups"]  # "<--real folder>, <processing>"
        assert sorted(name.rsplit(", ", 1)[1] for name in groups) == ["asis", "matched", "web"]
        assert len(calibration["real_scores"]) == 72
        assert all(len(scores) == 24 for scores in groups.values())  # each its own photos
        pooled = [score for scores in groups.values() for score in scores]
        assert sorted(pooled) == sorted(calibration["real_scores"])
        flagged = {name: np.mean(np.array(scores) > calibration["threshold"])
                   for name, scores in groups.items()}
        assert max(flagged.values()) <= 0.1
        assert max(flagged.values()) == pytest.approx(0.1, abs=0.05)


def test_calibrate_as_is_only_and_unknown_processing(
    runner: CliRunner, calibrated: dict[str, Any], binary_run: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "asis"
    shutil.copytree(calibrated["folder"], folder)
    held_out = binary_run["work"] / "held_out"
    result = invoke(runner, ["calibrate", folder, "--real", held_out, "--fpr", "0.1",
                             "--workers", "0", "--processing", "asis"])
    assert result.exit_code == 0, result.stderr
    stored = json.loads((folder / "calibration.json").read_text())
    assert stored["processings"] == ["asis"]
    for calibration in stored["detectors"].values():
        assert len(calibration["real_scores"]) == 24
        assert list(calibration["groups"]) == [str(held_out)]
        flagged = np.mean(np.array(calibration["real_scores"]) > calibration["threshold"])
        assert flagged == pytest.approx(0.1, abs=0.05)
    bad = invoke(runner, ["calibrate", folder, "--real", held_out, "--processing", "asis,print"])
    assert bad.exit_code == EXIT_USAGE
    assert "asis, matched, web" in bad.stderr and "Traceback" not in bad.stderr


def test_calibrate_refuses_before_writing_or_scoring(
    runner: CliRunner, binary_run: dict[str, Any], tmp_path: Path
) -> None:
    """A folder that is no detector folder gets nothing copied into it; too few photos
    are refused before minutes of scoring, with the minimum named."""
    images = tmp_path / "images"
    images.mkdir()
    noise_jpeg(images / "a.jpg")
    real = tmp_path / "real"
    for i in range(24):
        noise_jpeg(real / f"r{i}.jpg", seed=900 + i)
    result = invoke(runner, ["calibrate", images, "--binary", binary_run["output"], "--real",
                             real, "--workers", "0"])
    assert result.exit_code == EXIT_USAGE and "extractor.pt is missing" in result.stderr
    assert sorted(p.name for p in images.iterdir()) == ["a.jpg"]
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(real.iterdir())[:5]:
        shutil.copy(path, few)
    result = invoke(runner, ["calibrate", shipped_copy(tmp_path), "--real", few, "--workers", "0"])
    assert result.exit_code == EXIT_USAGE and "at least 20" in result.stderr
    assert "calibrating" not in result.stderr  # refused before any scoring


def test_a_failed_calibration_leaves_the_folder_as_it_was(
    runner: CliRunner, calibrated: dict[str, Any], binary_run: dict[str, Any], tmp_path: Path
) -> None:
    """Too few readable photos, found only after scoring: the binary.pt that --binary
    brought must not stay, or the calibrated folder would no longer open."""
    folder = tmp_path / "calibrated"
    shutil.copytree(calibrated["folder"], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    mostly_junk = tmp_path / "mostly_junk"
    for i in range(5):
        noise_jpeg(mostly_junk / f"r{i}.jpg", seed=950 + i)
    for i in range(20):  # distinct bytes: copies of one file would count once
        (mostly_junk / f"junk{i}.jpg").write_bytes(f"not an image {i}".encode())
    model, meta = load_model(binary_run["output"], task=BINARY)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # another binary detector than the folder's
    other = tmp_path / "other.pt"
    save_checkpoint(other, model, meta)
    result = invoke(runner, ["calibrate", folder, "--binary", other, "--real", mostly_junk,
                             "--processing", "asis", "--workers", "0"])
    assert result.exit_code == EXIT_USAGE and "readable real photos" in result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    refused = invoke(runner, ["calibrate", folder, "--real", mostly_junk, "--default", "nothing",
                              "--workers", "0"])
    assert refused.exit_code == EXIT_USAGE and "calibrating" not in refused.stderr


def shipped_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "shipped"
    shutil.copytree(Path(shipped_weights.__file__).parent, folder,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py", "faces"))
    return folder


@pytest.mark.parametrize("detector", ["fused", "binary", "oneclass"])
def test_scan_with_each_detector(runner: CliRunner, calibrated: dict[str, Any],
                                 binary_run: dict[str, Any], detector: str) -> None:
    images = [binary_run["fake"] / "f0.png", next(binary_run["real"].rglob("*.jpg"))]
    result = invoke(runner, ["scan", *images, "--model", calibrated["folder"], "--detector",
                             detector, "-f", "json", "-q", "--workers", "0"])
    assert result.exit_code in (0, 1), result.stderr
    records = json.loads(result.stdout)["results"]
    assert len(records) == 2
    expected = {"fused": {"oneclass", "binary"}}.get(detector, {detector})
    for record in records:
        assert record["detector"] == detector
        assert set(record["components"]) == expected
        assert 0.0 <= record["score"] <= 1.0
        assert (record["raw_score"] > record["threshold"]) == (record["score"] > 0.5)
        assert set(record["model"]) >= {"extractor_sha256", "density_sha256", "binary_sha256",
                                        "calibration_sha256"}
        assert (record["log_likelihood"] is None) == (detector == "binary")
        assert_scored_by(record, DetectorFolder.open(calibrated["folder"]))
    # the default of this folder is the fused detector
    default = invoke(runner, ["scan", *images, "--model", calibrated["folder"], "-f", "json",
                              "-q", "--workers", "0"])
    assert {r["detector"] for r in json.loads(default.stdout)["results"]} == {"fused"}


def test_refit_after_calibrate_asks_to_recalibrate(runner: CliRunner, calibrated: dict[str, Any],
                                                   binary_run: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """Thresholds hold only for the weights they were set on."""
    stored = json.loads((calibrated["folder"] / "calibration.json").read_text())
    assert set(stored["weights"]) == {"extractor_sha256", "density_sha256", "binary_sha256"}
    folder = tmp_path / "refit"
    shutil.copytree(calibrated["folder"], folder)
    refit = invoke(runner, ["fit-gmm", binary_run["real"], "-o", folder, "--extractor", TEACHER,
                            "--patches", "4", "--components", "2", "--pca-dim", "3",
                            "--workers", "0", "--no-cache", "--overwrite"])
    assert refit.exit_code == 0, refit.stderr
    result = invoke(runner, ["scan", binary_run["fake"] / "f0.png", "--model", folder, "-q"])
    assert result.exit_code == EXIT_USAGE
    assert "calibrate" in result.stderr and "Traceback" not in result.stderr


def test_scan_refuses_a_detector_the_folder_lacks(runner: CliRunner, tmp_path: Path,
                                                   binary_run: dict[str, Any]) -> None:
    result = invoke(runner, ["scan", binary_run["fake"] / "f0.png", "--model",
                             binary_run["work"] / "no-such-folder", "-q"])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.stderr
    oneclass_only = tmp_path / "oneclass"
    shutil.copytree(binary_run["work"] / "detector", oneclass_only)
    for name in ("binary.pt", "calibration.json", "detector.json"):
        (oneclass_only / name).unlink()
    result = invoke(runner, ["scan", binary_run["fake"] / "f0.png", "--model", oneclass_only,
                             "--detector", "binary", "-q"])
    assert result.exit_code == EXIT_USAGE
    assert "calibrate" in result.stderr


def test_evaluate_against_a_baseline_folder(runner: CliRunner, calibrated: dict[str, Any],
                                            binary_run: dict[str, Any]) -> None:
    """``evaluate --baseline``: the same files scored by a second folder's same
    detector; its mean pair AUC is what evaluating that folder alone gives, and the
    difference is the two means' (with a paired interval around it)."""
    shipped = Path(shipped_weights.__file__).parent
    common = ["evaluate", "--real", binary_run["real"], "--fake", binary_run["fake"],
              "--detector", "oneclass", "-f", "json", "--workers", "0", "-q"]
    compared = invoke(runner, [*common, "--model", calibrated["folder"], "--baseline", shipped])
    assert compared.exit_code == 0, compared.stderr
    document = json.loads(compared.stdout)
    alone = json.loads(invoke(runner, [*common, "--model", shipped]).stdout)
    baseline = document["baseline"]
    assert baseline["detector"] == "oneclass"
    assert baseline["model"]["extractor_sha256"] == alone["model"]["extractor_sha256"]
    assert baseline["mean_pair_auc"]["value"] == pytest.approx(alone["mean_pair_auc"]["value"])
    difference = baseline["difference"]
    assert difference["value"] == pytest.approx(
        document["mean_pair_auc"]["value"] - alone["mean_pair_auc"]["value"])
    low, high = difference["ci95"]
    assert low <= difference["value"] <= high
    table = invoke(runner, [*(a for a in common if a not in ("-f", "json")), "--model",
                            calibrated["folder"], "--baseline", shipped])
    assert "against the baseline" in table.stdout and "paired" in table.stdout
    by_name = json.loads(invoke(runner, [*common, "--model", calibrated["folder"],
                                         "--baseline", "shipped"]).stdout)
    assert by_name["baseline"]["model"]["extractor_sha256"] == alone["model"]["extractor_sha256"]
    refused = invoke(runner, [*common, "--baseline", shipped, "--faces"])
    assert refused.exit_code == EXIT_USAGE and "--baseline" in refused.stderr


def test_detection_benchmark_runs_on_a_tiny_set(calibrated: dict[str, Any], tmp_path: Path,
                                                subprocess_env: dict[str, str]) -> None:
    """benchmarks/detection.py through the real CLI: pair AUCs, FPR per real set, TPR per
    AI family, for each detector and condition asked."""
    test_dir = tmp_path / "test"
    for i in range(3):
        noise_jpeg(test_dir / "real" / "cameras" / f"r{i}.jpg", seed=700 + i)
        noise_jpeg(test_dir / "real" / "web" / f"w{i}.jpg", seed=710 + i, quality=75)
        smooth_png(test_dir / "ai" / "gen-a" / f"a{i}.png", seed=720 + i)
    out = tmp_path / "bench.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "detection.py"
    done = subprocess.run(
        [sys.executable, script, "--model", calibrated["folder"], "--test-dir", test_dir,
         "--per-group", "0", "--detectors", "fused,oneclass", "--conditions", "asis,matched",
         "--workers", "0", "--out", out, "--baseline", calibrated["folder"]],
        capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"fused", "oneclass"}
    for by_condition in results.values():
        assert set(by_condition) == {"asis", "matched"}
        for summary in by_condition.values():
            assert set(summary["pairs_auc"]) == {"gen-a vs cameras", "gen-a vs web"}
            assert 0.0 <= summary["mean_pair_auc"] <= 1.0
            low, high = summary["mean_pair_auc_ci95"]
            assert low <= summary["mean_pair_auc"] <= high
            assert set(summary["fpr"]) == {"cameras", "web"}
            assert set(summary["tpr"]) == {"gen-a"}
            assert set(summary["review_fpr"]) == {"cameras", "web"}
            # against itself: the paired difference is exactly zero
            assert summary["baseline_difference"] == 0.0
            assert summary["baseline_difference_ci95"] == [0.0, 0.0]
    assert "mean pair AUC" in done.stdout and "difference from the baseline" in done.stdout
    # the numbers are the scan's: one pair's AUC and one set's FPR and TPR by hand
    scanned = invoke(CliRunner(), ["scan", test_dir, "--model", calibrated["folder"],
                                   "--detector", "oneclass", "-f", "json", "-q",
                                   "--workers", "0"])
    records = json.loads(scanned.stdout)["results"]
    ai, cameras = ([r for r in records if Path(r["path"]).parent.name == name]
                   for name in ("gen-a", "cameras"))
    wins = [(a["raw_score"] > r["raw_score"]) + 0.5 * (a["raw_score"] == r["raw_score"])
            for a in ai for r in cameras]
    summary = results["oneclass"]["asis"]
    assert summary["pairs_auc"]["gen-a vs cameras"] == pytest.approx(np.mean(wins), abs=1e-3)
    assert summary["fpr"]["cameras"] == pytest.approx(
        np.mean([r["verdict"] == "ai" for r in cameras]), abs=1e-3)
    assert summary["tpr"]["gen-a"] == pytest.approx(
        np.mean([r["verdict"] == "ai" for r in ai]), abs=1e-3)
    assert summary["review_fpr"]["cameras"] == pytest.approx(
        np.mean([r["verdict"] != "real" for r in cameras]), abs=1e-3)


def test_a_damaged_manifest_says_how_to_recover(runner: CliRunner, tmp_path: Path) -> None:
    """A damaged detector.json is refused with the way out: delete it, and the folder
    opens again from its weights (``calibrate`` then writes it anew)."""
    folder = shipped_copy(tmp_path)
    (folder / "detector.json").write_text("{bad")
    image = tmp_path / "a.jpg"
    noise_jpeg(image)
    result = invoke(runner, ["scan", image, "--model", folder, "--workers", "0"])
    message = "".join(result.stderr.split())  # the terminal may break the long path
    assert result.exit_code == EXIT_USAGE and "detector.jsonisdamaged" in message
    assert "deleteitandrun'aigdetectcalibrate'onitsfolder" in message
    (folder / "detector.json").unlink()
    assert "residual" in DetectorFolder.open(folder).available
