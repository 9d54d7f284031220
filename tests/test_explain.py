"""``aigdetect explain``: the heat map lines up with a spliced region, the JSON
schema, the self-contained HTML report, the consistency rules, and the outputs'
safety (never inside the evidence, never over an existing file)."""

from __future__ import annotations

import copy
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_image
from helpers_images import invoke, noise_array, smooth_array, snapshot
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from rich.console import Console
from typer.testing import CliRunner

from aigdetect.cli import EXIT_USAGE, new_file
from aigdetect.detectors import EXTRACTOR_FILE, DetectorFolder, default_model_dir
from aigdetect.explain.consistency import (
    PretextReader,
    exposure_text,
    focal_text,
    rank,
    reliability,
)
from aigdetect.explain.console import print_document
from aigdetect.explain.heatmap import (
    FACE_COLOURS,
    LABEL_FRACTION,
    MAX_LONG_SIDE,
    MIN_LABEL,
    MIN_SHORT_SIDE,
    PANEL,
    ColourScale,
    TileEvidence,
    draw_faces,
    draw_heatmap,
    drawing_scale,
    map_caption,
)
from aigdetect.patches import grid_tiles, grid_tiles_at

#: The spliced test image: left half a camera-like noisy JPEG, right half a smooth
#: gradient pasted in (8 x 4 tiles of 64 px; the pasted half starts at x = 256).
SPLICED = (512, 256)
CASE_KEYS = {"path", "sha256", "size", "format", "width", "height", "notes", "error",
             "verdict", "heatmap", "camera_traces", "faces", "provenance"}


def spliced_png(path: Path) -> Path:
    width = SPLICED[0]
    buffer = io.BytesIO()
    Image.fromarray(noise_array(SPLICED, 1)).save(buffer, "JPEG", quality=85)
    pixels = np.asarray(Image.open(buffer).convert("RGB")).copy()
    pixels[:, width // 2 :] = smooth_array(SPLICED, 2)[:, width // 2 :]
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One explain run over a spliced image, a generator PNG and an empty file."""
    root = tmp_path_factory.mktemp("explain")
    evidence = root / "evidence"
    evidence.mkdir()
    spliced_png(evidence / "spliced <b>&.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "<script>alert(1)</script> see https://example.com, Steps: 20")
    Image.fromarray(noise_array((128, 128), 3)).save(evidence / "gen.png", pnginfo=info)
    (evidence / "empty.jpg").write_bytes(b"")
    files = sorted(evidence.iterdir())
    before = snapshot(files)
    # the fused detector: its heat map draws every component's tiles
    result = invoke(CliRunner(), ["explain", evidence, "-o", root / "out", "-f", "json",
                                  "--html", root / "report.html", "--tiles", "32", "-q",
                                  "--detector", "fused"])
    return {"result": result, "document": json.loads(result.stdout), "root": root,
            "files": files, "before": before}


def case(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in run["document"]["images"] if c["path"].endswith(name))


def test_grid_positions_match_the_tiles() -> None:
    pixels = noise_array((300, 200), 0)
    tiles, positions = grid_tiles_at(pixels, 64, max_tiles=5)
    np.testing.assert_array_equal(tiles, grid_tiles(pixels, 64, max_tiles=5))
    for tile, (x, y) in zip(tiles, positions, strict=True):
        np.testing.assert_array_equal(tile, pixels[y : y + 64, x : x + 64].transpose(2, 0, 1))


def test_heatmap_points_at_the_pasted_half(run: dict[str, Any]) -> None:
    heatmap = case(run, "&.png")["heatmap"]
    assert heatmap["tiles_scored"] == heatmap["tiles_in_grid"] == 32
    # a component that tells the smooth paste from the JPEG noise at one tile (with the
    # shipped weights, the binary detector) puts its 8 most suspicious tiles there, and
    # its top regions: the map's positions are the tiles' own
    maps = {"oneclass": "oneclass_atypicality", "binary": "binary_logit",
            "residual": "residual_logit"}
    assert set(maps.values()) <= set(heatmap["tiles"][0])

    def in_paste(tiles: list[dict[str, Any]]) -> int:
        return sum(t["x"] >= SPLICED[0] // 2 for t in tiles)

    pointing = [name for name, key in maps.items()
                if in_paste(sorted(heatmap["tiles"], key=lambda t: -t[key])[:8]) >= 7]
    assert pointing
    assert all(in_paste(heatmap["top_regions"][name]) == len(heatmap["top_regions"][name])
               for name in pointing)
    assert "not a segmentation" in heatmap["note"]


def test_heatmap_png_is_drawn(run: dict[str, Any]) -> None:
    path = Path(case(run, "&.png")["heatmap"]["file"])
    assert path.parent == run["root"] / "out" and path.name.endswith(".heatmap.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 3 * 400  # thumbnail + two overlays


@pytest.mark.parametrize("shape", [(400, 20000), (20000, 400), (3000, 4000), (80, 100)])
def test_heat_maps_of_any_shape_keep_tiles_visible_and_their_legend(tmp_path: Path,
                                                                    shape) -> None:
    """A panorama or a strip was drawn 8 px thin, its 64 px tiles a pixel wide and its
    colour bar cut off: the drawn image keeps a short side of MIN_SHORT_SIDE where its
    long side allows, and every panel is at least PANEL wide for the legend."""
    pixels = np.zeros((*shape, 3), np.uint8)
    positions = np.array([[0, 0], [64, 0]])
    evidence = TileEvidence(positions, 64, {"residual": np.array([0.0, 1.0])}, 2)
    draw_heatmap(pixels, evidence, tmp_path / "map.png", "title")
    scale = drawing_scale(shape, PANEL)
    drawn = (round(shape[0] * scale), round(shape[1] * scale))
    assert min(drawn) >= min(MIN_SHORT_SIDE, round(min(shape) * MAX_LONG_SIDE / max(shape)))
    assert max(drawn) <= MAX_LONG_SIDE
    if max(shape) > 10 * min(shape):  # a panorama or strip: its tiles stay visible
        assert 64 * scale >= 8
    panel_width = max(drawn[1], PANEL)  # the image, or its legend where it is narrower
    with Image.open(tmp_path / "map.png") as sheet:
        assert sheet.width == 2 * panel_width + 30 and sheet.height > drawn[0]
        centre = (drawn[1] // 2, 30 + drawn[0] // 2)  # both panels whole, side by side:
        assert sum(sheet.getpixel((10 + centre[0], centre[1]))) < 200  # the black image
        # and the map over its dimmed copy, not the sheet's white
        assert sum(sheet.getpixel((20 + panel_width + centre[0], centre[1]))) < 3 * 240
    if max(shape) >= 3000 and min(shape) >= 3000:  # an ordinary photo: as before
        assert max(drawn) == PANEL


def test_json_schema(run: dict[str, Any]) -> None:
    document = run["document"]
    assert document["schema_version"] == 1 and document["kind"] == "aigdetect.explain"
    assert {"aigdetect_version", "analysed_at", "command", "detector", "model",
            "output_dir", "images"} <= set(document)
    assert document["analysed_at"].endswith("+00:00")
    assert {"extractor_sha256", "binary_sha256", "residual_sha256"} <= set(document["model"])
    assert len(document["images"]) == 3
    for image in document["images"]:
        assert set(image) == CASE_KEYS
    verdict = case(run, "&.png")["verdict"]
    assert {"detector", "score", "raw_score", "threshold", "verdict", "percentile",
            "uncertain_band", "calibrated_fpr", "components", "patches"} <= set(verdict)
    assert set(verdict["components"]) == {"oneclass", "binary", "residual"}
    low, high = verdict["uncertain_band"]
    assert low < verdict["threshold"] == high
    traces = case(run, "&.png")["camera_traces"]
    exposure = next(t for t in traces["tags"] if t["tag"] == "exposure_time")
    assert exposure["status"] == "informative" and exposure["kind"] == "ordinal"
    assert next(t for t in traces["tags"] if t["tag"] == "make")["status"] == "not informative"
    assert not any(t["flag"] for t in traces["tags"])


def test_unreadable_file_and_exit_code(run: dict[str, Any]) -> None:
    empty = case(run, "empty.jpg")
    assert empty["error"] and empty["verdict"] is None and empty["heatmap"] is None
    flagged = any(c["verdict"] and c["verdict"]["verdict"] == "ai"
                  for c in run["document"]["images"])
    assert run["result"].exit_code == (4 if flagged else 3)


def test_evidence_untouched(run: dict[str, Any]) -> None:
    assert snapshot(run["files"]) == run["before"]


class Sections(HTMLParser):
    """Collects headings, image sources and text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.sources: list[str] = []
        self.tags: list[str] = []
        self._heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._heading = tag in ("h1", "h2", "h3")
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        if self._heading:
            self.headings.append(data)
            self._heading = False


def test_terminal_report_names_the_detector_and_model(run: dict[str, Any]) -> None:
    console = Console(record=True, width=200, file=io.StringIO())
    print_document(run["document"], console)
    lines = console.export_text().splitlines()
    assert lines[0].startswith("aigdetect ") and "detector fused of model default" in lines[0]
    text = "\n".join(lines)
    assert "gen.png" in text and "empty.jpg" in text
    # a pooled percentile beside a per-kind verdict looks like a contradiction unless said
    assert "every kind pooled" in text


def test_html_report_is_self_contained(run: dict[str, Any]) -> None:
    text = (run["root"] / "report.html").read_text(encoding="utf-8")
    page = Sections()
    page.feed(text)
    headings = " | ".join(page.headings)
    for section in ("case report", "Summary", "File", "How unusual", "Where",
                    "What the pixels say about the camera", "What the metadata says"):
        assert section in headings
    assert "spliced <b>&.png" in headings  # the name, escaped, shown as text
    assert "spliced <b>" not in text  # nowhere raw (the summary table, the file table)
    assert "script" not in page.tags and "<script>" not in text
    assert "http://" not in text.lower() and "https://" not in text.lower()
    assert page.sources and all(s.startswith("data:image/png;base64,") for s in page.sources)
    assert "@media print" in text and "a lead, not proof" in text
    assert run["document"]["images"][0]["sha256"] in text


def test_outputs_never_inside_the_evidence_nor_over_a_file(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "evidence" / "a.jpg")
    runner = CliRunner()
    inside = invoke(runner, ["explain", photo.parent, "-o", photo.parent / "maps"])
    assert inside.exit_code == EXIT_USAGE and "inside the input folder" in inside.stderr
    existing = tmp_path / "report.html"
    existing.write_text("earlier report")
    refused = invoke(runner, ["explain", photo, "--html", existing, "-o", tmp_path / "o"])
    assert refused.exit_code == EXIT_USAGE and existing.read_text() == "earlier report"
    taken = new_file(tmp_path, 1, photo)
    taken.write_bytes(b"x")
    assert new_file(tmp_path, 1, photo) != taken
    dangling = new_file(tmp_path, 1, photo)
    dangling.symlink_to(tmp_path / "nowhere.png")  # would be written through
    assert new_file(tmp_path, 1, photo) not in (taken, dangling)
    long_name = invoke(runner, ["explain", photo, "--html", tmp_path / ("a" * 300 + ".html"),
                                "-o", tmp_path / "o2"])
    assert long_name.exit_code == EXIT_USAGE and "File name too long" in long_name.stderr


def test_outputs_stay_out_of_the_folder_of_a_file_named_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``explain case/a.jpg`` (or a shell glob): neither the heat maps, nor the report,
    nor the default folder made in the current one may land directly beside it, nor
    beside the target of a linked file (as ``scan -o`` refuses); the README's way,
    from another folder, works."""
    photo = write_image(tmp_path / "case" / "a.jpg")
    (tmp_path / "links").mkdir()
    os.symlink(photo, tmp_path / "links" / "a.jpg")
    runner = CliRunner()
    maps = invoke(runner, ["explain", photo, "-o", photo.parent / "maps"])
    assert maps.exit_code == EXIT_USAGE and "beside the files it reads" in maps.stderr
    report = invoke(runner, ["explain", photo, "--html", photo.parent / "r.html",
                             "-o", tmp_path / "out"])
    assert report.exit_code == EXIT_USAGE and "beside the files it reads" in report.stderr
    linked = invoke(runner, ["explain", tmp_path / "links" / "a.jpg", "-o",
                             photo.parent / "maps"])
    assert linked.exit_code == EXIT_USAGE
    monkeypatch.chdir(photo.parent)
    default = invoke(runner, ["explain", "a.jpg"])
    assert default.exit_code == EXIT_USAGE
    assert "beside the evidence" in " ".join(default.stderr.split())
    assert sorted(p.name for p in photo.parent.iterdir()) == ["a.jpg"]
    assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)
    elsewhere = invoke(runner, ["explain", "case/a.jpg", "-f", "json", "-q"])
    assert elsewhere.exit_code in (0, 1, 3), elsewhere.stderr
    assert json.loads(elsewhere.stdout)["output_dir"].startswith("explain-")


def test_missing_input_is_a_case_and_the_report_may_go_in_the_new_folder(
        tmp_path: Path) -> None:
    """As scan does: an input that is not there is reported and counted (exit 3 or 4),
    not skipped; and --html may name a file in the -o folder explain creates."""
    photo = write_image(tmp_path / "evidence" / "a.jpg")
    missing = tmp_path / "evidence" / "gone.jpg"
    case_folder = tmp_path / "case17"
    result = invoke(CliRunner(), ["explain", photo, missing, "-o", case_folder, "--html",
                                  case_folder / "report.html", "-f", "json", "-q"])
    document = json.loads(result.stdout)
    gone = next(c for c in document["images"] if c["path"] == str(missing))
    assert "no such file" in gone["error"] and gone["verdict"] is None
    assert set(gone) == CASE_KEYS
    assert gone["provenance"] is None  # nothing was read, so nothing is claimed
    assert result.exit_code in (3, 4)
    assert (case_folder / "report.html").is_file()
    table = invoke(CliRunner(), ["explain", missing, "-o", tmp_path / "again", "-q"])
    assert table.exit_code == 3 and "metadata: not read" in table.stdout
    assert not (tmp_path / "again").exists()  # no heat map drawn: no empty folder left
    only_report = invoke(CliRunner(), ["explain", missing, "-o", tmp_path / "c18", "--html",
                                       tmp_path / "c18" / "report.html", "-f", "json", "-q"])
    assert json.loads(only_report.stdout)["output_dir"] == str(tmp_path / "c18")
    assert (tmp_path / "c18" / "report.html").is_file()


@pytest.mark.parametrize(("metrics", "status"), [
    ({"concordance": 0.641, "chance": 0.5}, "informative"),
    ({"concordance": 0.551, "chance": 0.5}, "weak"),
    ({"concordance": 0.324, "chance": 0.5}, "not informative"),
    ({"accuracy": 0.733, "chance": 0.733}, "not informative"),
    (None, "not informative"),
])
def test_reliability(metrics: dict[str, float] | None, status: str) -> None:
    name = "accuracy" if metrics and "accuracy" in metrics else "concordance"
    assert reliability(metrics, name)["status"] == status


def test_flag_only_where_an_informative_head_strongly_disagrees() -> None:
    reader = PretextReader.load(default_model_dir() / EXTRACTOR_FILE, torch.device("cpu"))
    classes = reader.meta.vocabularies["make"].classes
    confident = np.full(len(classes), 0.01 / (len(classes) - 1))
    confident[classes.index("nikon")] = 0.99
    reader.meta.metrics["make"] = {"accuracy": 0.9, "chance": 0.2}
    assert reader._categorical("make", confident, "canon")["flag"]
    assert not reader._categorical("make", confident, "nikon")["flag"]
    unsure = np.full(len(classes), 0.6 / (len(classes) - 1))  # top class below CONFIDENT
    unsure[classes.index("nikon")] = 0.4
    unsure[classes.index("canon")] = 0.0
    assert not reader._categorical("make", unsure / unsure.sum(), "canon")["flag"]
    reader.meta.metrics["make"] = {"accuracy": 0.2, "chance": 0.21}  # at chance: no evidence
    row = reader._categorical("make", confident, "canon")
    assert not row["flag"] and row["status"] == "not informative" and row["agrees"] is False


def test_a_head_at_chance_neither_agrees_nor_disagrees(tmp_path: Path) -> None:
    """A photo whose EXIF claims a make, read by the shipped heads: the make head is at
    chance, so its row says nothing either way, whatever the pixels suggest."""
    photo = write_image(tmp_path / "a.jpg", exif={"Make": "Canon", "Model": "EOS 5D"})
    reader = PretextReader.load(default_model_dir() / EXTRACTOR_FILE, torch.device("cpu"))
    tiles = grid_tiles(np.asarray(Image.open(photo).convert("RGB")), 64, 16)
    rows = {row["tag"]: row for row in reader.read(tiles, photo)}
    assert rows["make"]["claimed"] is not None and rows["make"]["status"] == "not informative"
    assert all(row["agrees"] is None for row in rows.values()
               if row["status"] == "not informative")


def test_rank_is_a_percentile_with_half_ties() -> None:
    assert rank(5.0, [1.0, 2.0, 8.0, 9.0]) == 50.0
    assert rank(2.0, [1.0, 2.0, 3.0, 4.0]) == 37.5
    assert rank(0.0, [1.0]) == 0.0 and rank(2.0, [1.0]) == 100.0
    assert rank(1.0, []) is None and rank(1.0, None) is None


def test_ordinal_heads_rank_pixels_and_claim_among_calibration_photos() -> None:
    """ISO: the pixels rank at the top of the calibration photos, the claim at the
    bottom; an informative head flags it, a head at chance says nothing."""
    reference = {"scores": {"iso": [float(v) for v in range(100)]},
                 "values": {"iso": [100.0] * 50 + [3200.0] * 50}}
    reader = PretextReader.load(default_model_dir() / EXTRACTOR_FILE, torch.device("cpu"),
                                reference)
    reader.meta.metrics["iso"] = {"concordance": 0.8, "chance": 0.5}
    row = reader._ordinal("iso", 95.0, 50.0)
    assert (row["pixels_percentile"], row["claimed_percentile"]) == (95.5, 0.0)  # ties half
    assert row["flag"] and row["agrees"] is False
    assert not reader._ordinal("iso", 95.0, 6400.0)["flag"]  # both high: consistent
    reader.meta.metrics["iso"] = {"concordance": 0.5, "chance": 0.5}
    assert not reader._ordinal("iso", 95.0, 50.0)["flag"]
    plain = PretextReader.load(default_model_dir() / EXTRACTOR_FILE, torch.device("cpu"))
    no_reference = plain._ordinal("iso", 95.0, 50.0)
    assert no_reference["pixels_percentile"] is None and not no_reference["flag"]


def test_shipped_folder_has_a_pretext_reference() -> None:
    reference = DetectorFolder.open(None).pretext_reference
    assert reference is not None
    assert {"iso", "fnumber", "exposure_time", "focal_length"} <= set(reference["scores"])
    assert all(len(v) >= 100 for v in reference["scores"].values())


def test_html_text_shows_control_and_bidi_characters_escaped() -> None:
    """Metadata is attacker-written: an override must not make "FAKE\u202etxt.exe" read
    as "FAKEexe.txt" in the report, nor an escape sequence reach a terminal via cat."""
    from aigdetect.explain.html import text
    shown = text("Midjourney \x1b[2J<b>FAKE\u202etxt.exe http://x.example")
    assert "\x1b" not in shown and "\u202e" not in shown
    assert "\\x1b" in shown and "\\u202e" in shown
    assert "&lt;b&gt;" in shown and "hxxp[:]//" in shown
    shouted = text("HTTPS://x.example")  # any case is a link to a browser
    assert "://" not in shouted and "hxxp" in shouted.lower()


def test_the_deciding_verdict_is_the_faces_with_faces() -> None:
    """Summary rows and the exit code follow what decides: with --faces the most
    suspicious face, else the whole image; an unread file is an error."""
    from aigdetect.explain.case import deciding_verdict
    image = {"verdict": "ai", "score": 0.9, "percentile": 1.0}
    faces = {"verdict": "real", "faces": [{"score": 0.2, "percentile": 40.0},
                                          {"score": 0.3, "percentile": 30.0},
                                          {"error": "network failed"}]}
    assert deciding_verdict({"verdict": image, "faces": faces}) == {
        "verdict": "real", "score": 0.3, "percentile": 30.0}
    assert deciding_verdict({"verdict": image, "faces": None}) == image
    assert deciding_verdict({"verdict": None, "faces": None}).get("verdict", "error") == "error"


def test_saturated_face_scores_are_told_apart_by_raw_score() -> None:
    from aigdetect.scanning import most_suspicious_face
    faces = [{"score": 1.0, "raw_score": 40.0}, {"score": 1.0, "raw_score": 90.0},
             {"error": "network failed"}]
    assert most_suspicious_face(faces)["raw_score"] == 90.0
    assert most_suspicious_face([{"error": "x"}]) is None


def test_face_verdict_is_scans_rule() -> None:
    """``scan --faces`` and ``explain --faces`` share one rule: the most suspicious
    face decides, a damaged file's face never says ``ai``, faces that were found but
    could not be scored make an error, and no face is ``no-face``."""
    from aigdetect.scanning import NO_FACE, face_verdict
    flagged = [{"score": 0.9, "raw_score": 3.0, "verdict": "ai"}, {"error": "network failed"}]
    assert face_verdict(flagged, []) == "ai"
    assert face_verdict(flagged, ["damaged: truncated after 80 % of the rows"]) == "uncertain"
    assert face_verdict([{"error": "network failed"}], []) == "error"
    assert face_verdict([], []) == NO_FACE


def test_non_finite_score_is_an_error_case(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN from a damaged model is no evidence: the case is an error (exit 3), never
    'real', and the JSON stays valid, as in scan."""
    from aigdetect.residual_model import ResidualClassifier
    photo = write_image(tmp_path / "evidence" / "a.jpg")
    monkeypatch.setattr(ResidualClassifier, "decision_function",
                        lambda self, features: np.full(len(features), np.nan))
    result = invoke(CliRunner(), ["explain", photo, "-o", tmp_path / "out", "-f", "json",
                                  "-q", "--detector", "residual"])
    assert result.exit_code == 3, result.stderr
    (image,) = json.loads(result.stdout)["images"]
    assert "non-finite" in image["error"] and image["verdict"] is None


def test_decoding_limits_are_options_as_in_scan(tmp_path: Path) -> None:
    """An image over --max-pixels is an error case naming the option, and explain has
    the option, so a large panorama can still be explained."""
    from helpers_images import noise_jpeg
    photo = noise_jpeg(tmp_path / "evidence" / "panorama.jpg", size=(1600, 1000), seed=3)
    args = ["explain", photo, "-f", "json", "-q", "--tiles", "4"]
    capped = invoke(CliRunner(), [*args, "-o", tmp_path / "a", "--max-pixels", "1"])
    assert capped.exit_code == 3, capped.stderr
    (image,) = json.loads(capped.stdout)["images"]
    assert "--max-pixels" in image["error"]
    raised = invoke(CliRunner(), [*args, "-o", tmp_path / "b", "--max-pixels", "2"])
    assert raised.exit_code in (0, 1), raised.stderr
    assert json.loads(raised.stdout)["images"][0]["verdict"]["verdict"] in ("ai", "uncertain",
                                                                            "real")


def test_table_heads_with_the_capped_verdict_and_prints_the_notes(tmp_path: Path) -> None:
    """A single detector's table row is its image verdict, capped by the file's notes
    as scan's is (not its uncapped component opinion), and the notes are printed."""
    tiny = tmp_path / "evidence" / "tiny.png"
    tiny.parent.mkdir()
    Image.fromarray(noise_array((20, 30), 5)).save(tiny)
    result = invoke(CliRunner(), ["explain", tiny, "-o", tmp_path / "out", "-q"])
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines()  # "%": its calibrated FPR column
            if line.startswith("│ residual") and "%" in line]
    assert len(rows) == 1 and " uncertain " in rows[0], result.stdout
    assert "note: too small: smaller than one 64px patch, upscaled from 20x30" in result.stdout
    document = json.loads(invoke(CliRunner(), ["explain", tiny, "-o", tmp_path / "out2", "-q",
                                               "-f", "json"]).stdout)
    verdict = document["images"][0]["verdict"]
    assert verdict["verdict"] == "uncertain" and verdict["components"]["residual"]["verdict"] \
        in ("ai", "real")


def test_heat_maps_never_go_into_the_folder_of_a_named_file(tmp_path: Path) -> None:
    """``-o`` naming the evidence's own folder (or, for a link, its target's) is refused."""
    photo = write_image(tmp_path / "case" / "a.jpg")
    (tmp_path / "links").mkdir()
    os.symlink(photo, tmp_path / "links" / "a.jpg")
    for named in (photo, tmp_path / "links" / "a.jpg"):
        result = invoke(CliRunner(), ["explain", named, "-o", photo.parent, "-q"])
        assert result.exit_code == EXIT_USAGE and "folder of files it reads" in result.stderr
    assert sorted(p.name for p in photo.parent.iterdir()) == ["a.jpg"]


def test_output_must_be_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-o -`` is no folder named "-" (scan's ``-o -`` is stdout), and an existing
    file is said to be one."""
    photo = write_image(tmp_path / "case" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    dash = invoke(CliRunner(), ["explain", photo, "-o", "-", "-q"])
    assert dash.exit_code == EXIT_USAGE and "takes a folder" in dash.stderr
    assert not os.path.lexists(tmp_path / "-")
    (tmp_path / "report.json").write_text("{}")
    file = invoke(CliRunner(), ["explain", photo, "-o", tmp_path / "report.json", "-q"])
    assert file.exit_code == EXIT_USAGE and "is a file, not a folder" in file.stderr
    assert (tmp_path / "report.json").read_text() == "{}"


class Drawn:
    """What Pillow was asked to draw: each text (with its position, fill and font
    size) and each rectangle (with its fill and outline), in order."""

    def __init__(self) -> None:
        self.texts: list[dict[str, Any]] = []
        self.rectangles: list[dict[str, Any]] = []

    def joined(self) -> str:
        """Every text drawn, one after another (a wrapped caption reads whole again)."""
        return " ".join(t["text"] for t in self.texts)

    def backing(self, text: dict[str, Any]) -> dict[str, Any] | None:
        """The filled rectangle drawn last under ``text``'s top-left corner."""
        x, y = text["xy"]
        return next((r for r in reversed(self.rectangles) if r["fill"] is not None
                     and r["box"][0] <= x <= r["box"][2] and r["box"][1] <= y <= r["box"][3]),
                    None)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Drawn:
    """Records what the heat-map and face drawings write, to read the figure's words
    without OCR."""
    record = Drawn()
    text, rectangle = ImageDraw.ImageDraw.text, ImageDraw.ImageDraw.rectangle

    def recording_text(self, xy, string, *args, **kwargs):
        record.texts.append({"xy": tuple(xy), "text": string, "fill": kwargs.get("fill"),
                             "size": getattr(kwargs.get("font"), "size", None)})
        return text(self, xy, string, *args, **kwargs)

    def recording_rectangle(self, xy, *args, **kwargs):
        record.rectangles.append({"box": tuple(xy), "fill": kwargs.get("fill"),
                                  "outline": kwargs.get("outline")})
        return rectangle(self, xy, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", recording_text)
    monkeypatch.setattr(ImageDraw.ImageDraw, "rectangle", recording_rectangle)
    return record


def luma(colour: Any) -> float:
    red, green, blue = (colour, colour, colour) if isinstance(colour, int) else colour[:3]
    return 0.299 * red + 0.587 * green + 0.114 * blue


def test_map_colours_are_the_maps_alone_over_a_grey_image(tmp_path: Path) -> None:
    """The overlay mixed with the image's own colours: the most suspicious tile over
    blue sky came out purple (mid-scale), the least suspicious over a red jacket red.
    The map panel now lies over a dimmed greyscale copy, and the plain panel keeps
    the image's colours."""
    pixels = np.zeros((256, 512, 3), np.uint8)
    pixels[:, :256, 2] = 255  # blue sky on the left
    pixels[:, 256:, 0] = 255  # a red jacket on the right
    evidence = TileEvidence(np.array([[0, 0], [448, 0]]), 64,
                            {"residual": np.array([5.0, -5.0])}, 32)
    draw_heatmap(pixels, evidence, tmp_path / "map.png", "title")
    scale = drawing_scale(pixels.shape, PANEL)
    side, map_left = 64 * scale, 10 + max(round(512 * scale), PANEL) + 10
    with Image.open(tmp_path / "map.png") as sheet:
        sheet = sheet.convert("RGB")
        most = sheet.getpixel((round(map_left + side / 2), round(30 + side / 2)))
        least = sheet.getpixel((round(map_left + 448 * scale + side / 2),
                                round(30 + side / 2)))
        unscored = sheet.getpixel((round(map_left + 200 * scale), round(30 + 200 * scale)))
        plain = sheet.getpixel((round(10 + 100 * scale), round(30 + 100 * scale)))
    assert most[0] > most[2] + 50  # red over the blue sky
    assert least[2] > least[0] + 50  # blue over the red jacket
    assert unscored[0] == unscored[1] == unscored[2]  # no colour but the map's
    assert plain == (0, 0, 255)  # the image as stored keeps its colours


def test_captions_say_the_colours_are_relative_and_where_the_threshold_lies() -> None:
    """A camera photo far below the threshold still had deep-red tiles captioned "red =
    looks more AI-generated": the caption now gives the range of this image's tiles and
    where the whole-image threshold lies."""
    below = map_caption("residual", ColourScale(-6.88, 1.25, 3.364))
    assert "this image's tiles only, from -6.88 (blue) to 1.25 (red" in below
    assert "threshold 3.36, above every tile" in below
    assert "threshold 3.36 (black mark on the bar)" in map_caption(
        "residual", ColourScale(-6.88, 8.27, 3.364))
    assert "below every tile" in map_caption("binary", ColourScale(2.0, 4.0, 1.887))
    assert "threshold" not in map_caption("oneclass", ColourScale(1.0, 2.0, None))


def damaged_jpeg(path: Path) -> Path:
    """A noise JPEG cut in half: decoded with the decoder's grey fill, noted damaged."""
    from helpers_images import noise_jpeg
    whole = noise_jpeg(path.with_name("whole.jpg"), size=(256, 192), seed=4).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def test_the_figure_states_verdict_threshold_and_damage(tmp_path: Path,
                                                       drawn: Drawn) -> None:
    """The damaged note reached only the terminal and the JSON, and the figure had no
    verdict: a decoder's grey fill was captioned "image (as stored)", its tiles shown as
    least suspicious. The heat map now carries the verdict, the threshold of its map's
    units and the note that caps the verdict."""
    cut = damaged_jpeg(tmp_path / "evidence" / "cut.jpg")
    result = invoke(CliRunner(), ["explain", cut, "-o", tmp_path / "out", "-f", "json", "-q",
                                  "--tiles", "8"])
    (image,) = json.loads(result.stdout)["images"]
    note = next(n for n in image["notes"] if n.startswith("damaged:"))
    verdict = image["verdict"]
    words = drawn.joined()
    assert note in [t["text"] for t in drawn.texts]  # on a line of its own, whole
    assert "image as decoded: the file is damaged" in words
    assert "image (as stored)" not in words
    assert f"image verdict: {verdict['verdict']} (residual detector" in words
    assert f"threshold {verdict['threshold']:.3f}" in words
    values = [tile["residual_logit"] for tile in image["heatmap"]["tiles"]]
    assert f"this image's tiles only, from {min(values):.2f} (blue)" in words
    assert f"whole-image threshold {verdict['components']['residual']['threshold']:.2f}" \
        in words


def test_labels_sit_on_solid_backings_at_a_readable_size(tmp_path: Path,
                                                        drawn: Drawn) -> None:
    """Box numbers were black on dark-red tiles, a few pixels high on a large photo,
    and face labels were drawn in the box colour with no backing (gone on a red
    jacket); a long file name ran off the right edge."""
    photo = np.full((3000, 4000, 3), (220, 30, 30), np.uint8)  # red as the ai boxes
    positions = np.array([[x, 1024] for x in range(0, 4000 - 63, 64)])
    evidence = TileEvidence(positions, 64, {"residual": np.arange(len(positions), 0.0, -1)},
                            len(positions))
    title = "aigdetect explain: " + "exhibit_17_" * 30 + "end.jpg"
    draw_heatmap(photo, evidence, tmp_path / "map.png", title)
    numbers = [t for t in drawn.texts if t["text"] in {"1", "2", "3", "4", "5"}]
    drawn_short_side = round(3000 * drawing_scale(photo.shape, PANEL))
    assert len(numbers) == 5
    for number in numbers:
        assert number["size"] >= max(MIN_LABEL, drawn_short_side // LABEL_FRACTION)
        assert drawn.backing(number)["fill"] == (0, 0, 0) and luma(number["fill"]) > 200
    boxes = [r for r in drawn.rectangles if r["outline"] == (0, 0, 0) and r["fill"] is None]
    assert min(r["box"][2] - r["box"][0] for r in boxes) >= MIN_LABEL  # not a 6 px speck
    shown_title = next(t["text"] for t in drawn.texts if t["text"].startswith("aigdetect"))
    assert "…" in shown_title and shown_title.endswith("end.jpg")
    with Image.open(tmp_path / "map.png") as sheet:
        width = sheet.width
    assert ImageFont.load_default(15).getlength(shown_title) <= width - 20

    drawn.texts.clear()
    faces = [{"box": [100, 100, 800, 800], "score": 0.91, "verdict": "ai"},
             {"box": [2000, 0, 600, 600], "score": 0.45, "verdict": "uncertain"},
             {"box": [3700, 2000, 300, 300], "score": 0.1, "verdict": "real"}]
    draw_faces(photo, faces, tmp_path / "faces.png", "faces", "ai")
    labels = [t for t in drawn.texts if ": 0." in t["text"]]
    assert len(labels) == 3
    for label, face in zip(labels, faces, strict=True):
        backing = drawn.backing(label)
        assert backing is not None and backing["fill"] == FACE_COLOURS[face["verdict"]]
        assert abs(luma(label["fill"]) - luma(backing["fill"])) > 80  # contrasting text
        assert label["size"] >= MIN_LABEL
    assert "image's face verdict: ai" in drawn.joined()


def test_terminal_tables_fold_instead_of_cutting_at_80_columns(run: dict[str, Any]) -> None:
    """At 80 columns the camera table read ``exposure_…`` three times (which row
    disagrees?) and cut values (``0.0003101…``); exposure time and focal length read
    as photographers write them, while the JSON keeps the raw numbers."""
    from aigdetect.explain.html import render
    document = copy.deepcopy(run["document"])
    tags = {row["tag"]: row for row in case({"document": document}, "&.png")
            ["camera_traces"]["tags"]}
    tags["exposure_time"] |= {"claimed": 0.0003101, "claimed_percentile": 2.0}
    tags["focal_length"] |= {"claimed": 5.4, "claimed_percentile": 4.0}
    console = Console(record=True, width=80, file=io.StringIO())
    print_document(document, console)
    text = console.export_text()
    assert "…" not in text
    assert "1/3225 s" in text and "5.4 mm" in text
    camera = text[text.index("What the pixels say"):text.index("Each head is shown")]
    first_cells = "".join(line.split("│")[1].strip() for line in camera.splitlines()
                          if line.startswith("│"))
    assert "exposure_programmetering_mode" in first_cells  # each tag whole, in order
    assert "exposure_time" in first_cells and "exposure_mode" in first_cells
    assert tags["exposure_time"]["claimed"] == 0.0003101  # the document is untouched
    assert "1/3225 s" in render(document)


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.0003101, "1/3225 s"), (0.01, "1/100 s"), (1 / 250, "1/250 s"), (0.4, "1/2.5 s"),
    (2.0, "2 s"), (1.0, "1 s")])
def test_exposure_times_read_as_photographers_write_them(seconds: float, shown: str) -> None:
    assert exposure_text(seconds) == shown


def test_focal_lengths_to_a_tenth_of_a_millimetre() -> None:
    assert [focal_text(v) for v in (5.4, 4.15, 50.0, 26)] == ["5.4 mm", "4.2 mm", "50 mm",
                                                              "26 mm"]
