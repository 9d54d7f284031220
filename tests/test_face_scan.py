"""Face mode through the CLI: ``fit-gmm --faces``, ``scan --faces``, ``evaluate
--faces`` and ``explain --faces``.

A face detector folder is fitted here on the session's synthetic photos taken as
aligned face crops (``--aligned``), with the shipped extractor, so these tests run
without ``../shared``; the tests that need real faces (zero, one and several per
image) use ``../shared/data`` and skip cleanly when it is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA
from helpers_images import invoke, noise_jpeg, parse_json_stdout, tree_snapshot
from PIL import Image
from typer.testing import CliRunner

from aigdetect.cli import EXIT_USAGE
from aigdetect.density import RealPhotoDensity
from aigdetect.detectors import DENSITY_FILE, EXTRACTOR_FILE, default_model_dir
from aigdetect.faces import NO_FACE_SEEN

EXTRACTOR = default_model_dir() / EXTRACTOR_FILE
FAST = ["--workers", "0", "--patches", "4"]
REAL_FACES = SHARED_DATA / "faces" / "real"
PORTRAIT = "justadudewhohacks__face-api.js__examples__images__surprised.jpg"
SEVERAL = "ageitgey__face_recognition__examples__knn_examples__test__kit_with_rose.jpg"
LANDSCAPE = SHARED_DATA / "photos" / "Exiv2__exiv2__test__data__exiv2-bug2565.jpg"


@pytest.fixture(scope="module")
def face_model(runner: CliRunner, session_photo_folder: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A face detector folder fitted on the synthetic photos as aligned faces."""
    work = tmp_path_factory.mktemp("faces")
    photos = work / "photos"
    shutil.copytree(session_photo_folder, photos)
    output = work / "face-detector"
    result = invoke(runner, ["fit-gmm", photos, "--faces", "--aligned", "-o", output,
                             "--extractor", EXTRACTOR, "--components", "1", "--pca-dim", "4",
                             "--fpr", "0.1", "--no-cache", *FAST])
    assert result.exit_code == 0, result.stderr
    assert "faces of 12 photos" in result.stderr
    return output


def scan_json(runner: CliRunner, face_model: Path, *args: Any) -> tuple[int, dict[str, Any]]:
    result = invoke(runner, ["scan", "--faces", "--face-model", face_model, "-f", "json",
                             "--detector", "oneclass", *FAST, *args])
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, parse_json_stdout(result.stdout)


def test_fit_gmm_faces_records_how_faces_were_cut(face_model: Path) -> None:
    provenance = RealPhotoDensity.load(face_model / DENSITY_FILE).provenance
    assert provenance["aligned"] is True and provenance["face_enlarge"] == pytest.approx(1.3)
    assert provenance["fit_faces"] + provenance["calibration_faces"] == 12  # one per photo


def test_aligned_scan_judges_each_input_as_one_face(
    runner: CliRunner, face_model: Path, tmp_path: Path
) -> None:
    image = noise_jpeg(tmp_path / "crop.jpg", size=(200, 160), seed=5)
    _, document = scan_json(runner, face_model, "--aligned", image)
    record = document["results"][0]
    assert record["detector"] == "faces:oneclass"
    [face] = record["faces"]
    assert face["box"] == [0, 0, 200, 160] and face["patches"] > 0
    assert face["verdict"] in ("ai", "real", "uncertain")
    # the image's verdict is its (only) face's, but noise holds no face to see: capped
    assert record["score"] == face["score"]
    assert any(note.startswith(NO_FACE_SEEN) for note in record["notes"])
    assert record["verdict"] == ("uncertain" if face["verdict"] in ("ai", "real")
                                 else face["verdict"])
    assert record["model"]["faces_crops"] == "aligned"
    assert record["patches"] == face["patches"] and record["image"]["patches"] > 0
    assert record["image"]["detector"] == "oneclass"
    assert record["image"]["verdict"] in ("ai", "real", "uncertain")
    assert "faces_density_sha256" in record["model"]
    # the run header names the judge of the verdicts, as the records do
    run = document["run"]
    assert run["detector"] == "faces:oneclass"
    assert run["threshold"] == pytest.approx(record["threshold"], abs=1e-4)
    assert run["image"]["detector"] == "oneclass"
    assert run["image"]["threshold"] == pytest.approx(record["image"]["threshold"], abs=1e-4)


def test_image_without_a_face_says_so(runner: CliRunner, face_model: Path,
                                      tmp_path: Path) -> None:
    image = noise_jpeg(tmp_path / "texture.jpg", size=(256, 192), seed=6)
    code, document = scan_json(runner, face_model, image)
    record = document["results"][0]
    assert record["verdict"] == "no-face" and record["faces"] == []
    assert record["score"] is None and any("no face found" in n for n in record["notes"])
    assert record["image"]["score"] is not None  # the general detector still ran
    assert code == 0 and document["summary"]["no-face"] == 1


def test_every_record_of_a_face_run_names_the_face_detector(
    runner: CliRunner, face_model: Path, tmp_path: Path
) -> None:
    """Unreadable and missing inputs too: one run, one judge named in every record."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    image = noise_jpeg(tmp_path / "texture.jpg", size=(256, 192), seed=6)
    result = invoke(runner, ["scan", "--faces", "--face-model", face_model, "-f", "json",
                             "--detector", "oneclass", *FAST, image, broken,
                             tmp_path / "gone.jpg"])
    document = parse_json_stdout(result.stdout)
    assert result.exit_code == 3, result.stderr  # unreadable files, none flagged
    assert [r["detector"] for r in document["results"]] == ["faces:oneclass"] * 3
    assert document["run"]["detector"] == "faces:oneclass"


def test_face_options_are_checked(runner: CliRunner, face_model: Path, tmp_path: Path) -> None:
    image = noise_jpeg(tmp_path / "x.jpg")
    aligned_alone = invoke(runner, ["scan", "--aligned", image])
    assert aligned_alone.exit_code == EXIT_USAGE and "--faces" in aligned_alone.stderr
    threshold = invoke(runner, ["scan", "--faces", "--face-model", face_model,
                                "--threshold", "1", image])
    assert threshold.exit_code == EXIT_USAGE and "--fpr" in threshold.stderr
    missing = invoke(runner, ["scan", "--faces", "--face-model", tmp_path / "nowhere", image])
    assert missing.exit_code == EXIT_USAGE and "fit-gmm" in missing.stderr


def test_evaluate_faces_counts_images_without_a_face(
    runner: CliRunner, face_model: Path, tmp_path: Path
) -> None:
    real, fake = tmp_path / "real", tmp_path / "fake"
    for index in range(3):
        noise_jpeg(real / f"r{index}.jpg", size=(160, 160), seed=10 + index)
        noise_jpeg(fake / f"f{index}.jpg", size=(160, 160), seed=20 + index)
    result = invoke(runner, ["evaluate", "--faces", "--face-model", face_model, "--real", real,
                             "--fake", fake, "-f", "json", "-q", "--detector", "oneclass",
                             "--workers", "0"])
    assert result.exit_code == 3, result.stderr  # no face anywhere: nothing was measured
    document = json.loads(result.stdout)  # the counts are still reported
    assert document["detector"] == "faces:oneclass"
    assert document["no_face"] == {str(real): 3, str(fake): 3}  # noise has no face
    assert "6 image(s) hold no face" in result.stderr  # said, not only counted in the JSON


def test_explain_faces_draws_the_boxes(runner: CliRunner, face_model: Path,
                                       tmp_path: Path) -> None:
    image = noise_jpeg(tmp_path / "evidence" / "crop.jpg", size=(192, 192), seed=7)
    result = invoke(runner, ["explain", "--faces", "--aligned", "--face-model", face_model,
                             "-f", "json", "-o", tmp_path / "out", "--tiles", "16",
                             "--detector", "oneclass", image])
    assert result.exit_code in (0, 1), result.stderr
    faces = json.loads(result.stdout)["images"][0]["faces"]
    assert faces["detector"] == "faces:oneclass" and len(faces["faces"]) == 1
    drawing = Path(faces["file"])
    assert drawing.parent == tmp_path / "out" and drawing.name.endswith(".faces.png")
    with Image.open(drawing) as png:
        assert png.format == "PNG"


@pytest.mark.skipif(not REAL_FACES.is_dir() or not LANDSCAPE.is_file(),
                    reason="needs ../shared/data")
def test_scan_faces_on_real_photos_with_zero_one_and_several_faces(
    runner: CliRunner, face_model: Path
) -> None:
    _, document = scan_json(runner, face_model, LANDSCAPE, REAL_FACES / PORTRAIT,
                            REAL_FACES / SEVERAL)
    faces = {Path(r["path"]).name: r["faces"] for r in document["results"]}
    assert faces[LANDSCAPE.name] == []
    assert len(faces[PORTRAIT]) == 1
    assert len(faces[SEVERAL]) >= 2
    for record in document["results"]:
        for face in record["faces"]:
            x, y, w, h = face["box"]
            x0, y0, x1, y1 = face["crop"]
            assert x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1  # enlarged box
            assert x1 <= record["width"] and y1 <= record["height"]
        if record["faces"]:
            # scores saturate at 1: the raw score tells which face decided
            worst = max(record["faces"], key=lambda f: (f["score"], f["raw_score"]))
            assert (record["score"], record["raw_score"]) == (worst["score"], worst["raw_score"])


@pytest.mark.skipif(not REAL_FACES.is_dir() or not LANDSCAPE.is_file(),
                    reason="needs ../shared/data")
def test_aligned_says_when_an_image_is_no_face_crop(runner: CliRunner,
                                                    face_model: Path) -> None:
    """--aligned judges the whole image as a face: on a landscape that verdict means
    nothing, so the record says so and the verdict is capped; a portrait is not."""
    _, document = scan_json(runner, face_model, "--aligned", LANDSCAPE, REAL_FACES / PORTRAIT)
    landscape, portrait = document["results"]
    assert any(note.startswith(NO_FACE_SEEN) for note in landscape["notes"])
    assert landscape["verdict"] == "uncertain"
    assert not any(note.startswith(NO_FACE_SEEN) for note in portrait["notes"])
    [face] = landscape["faces"]
    assert face["box"] == [0, 0, landscape["width"], landscape["height"]]


def test_resume_refuses_to_mix_aligned_and_found_faces(runner: CliRunner, face_model: Path,
                                                       tmp_path: Path) -> None:
    """Whole images as faces and faces found in them are two judges: one results
    file holds one judge's verdicts."""
    (tmp_path / "evidence").mkdir()
    image = noise_jpeg(tmp_path / "evidence" / "crop.jpg", size=(200, 160), seed=5)
    results = tmp_path / "results.jsonl"
    common = ["scan", "--faces", "--face-model", face_model, "--detector", "oneclass",
              *FAST, "-f", "jsonl", "-o", results]
    first = invoke(runner, [*common, "--aligned", image])
    assert first.exit_code in (0, 1), first.stderr
    before = results.read_bytes()
    again = invoke(runner, [*common, "--resume", image])
    assert again.exit_code == EXIT_USAGE
    assert "faces_crops" in again.stderr
    assert results.read_bytes() == before


def test_fpr_sets_the_face_detectors_threshold(runner: CliRunner, face_model: Path,
                                               tmp_path: Path) -> None:
    """--fpr with --faces re-derives the face detector's threshold: a larger false-alarm
    rate gives a lower one."""
    image = noise_jpeg(tmp_path / "crop.jpg", size=(200, 160), seed=5)
    thresholds = [scan_json(runner, face_model, "--aligned", "--fpr", fpr, image)[1]
                  ["results"][0]["faces"][0]["threshold"] for fpr in ("0.5", "0.01")]
    assert thresholds[0] < thresholds[1]


def test_calibrate_refuses_a_face_folder(runner: CliRunner, face_model: Path,
                                         session_photo_folder: Path) -> None:
    """calibrate scores whole images, a face folder judges face crops: it teaches the
    face folder's own way (fit-gmm --faces --fpr) and leaves the folder as it was."""
    before = tree_snapshot(face_model)
    result = invoke(runner, ["calibrate", face_model, "--real", session_photo_folder,
                             "--workers", "0"])
    assert result.exit_code == EXIT_USAGE
    assert "face detector folder" in result.stderr and "--faces" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_snapshot(face_model) == before
