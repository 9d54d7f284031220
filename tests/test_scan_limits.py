"""Evidence-grade scanning, part 2: only image formats are opened, damaged files
never decide, every file has bounded cost, and every run leaves a header for the
chain of custody.

Everything goes through the real CLI with the shipped detector and ``--patches 4``.
``capfd`` sees file descriptor 2 itself: libjpeg writes its warnings there from C,
past Python's ``sys.stderr``, so CliRunner alone would miss them.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers_images import invoke, make_good_folder, noise_array, parse_json_stdout, png_chunk
from PIL import EpsImagePlugin, Image

from aigdetect import features
from aigdetect.cli import EXIT_INTERRUPTED
from aigdetect.detectors import DETECTOR_NAMES
from aigdetect.patches import count_marker
from aigdetect.scanning import capped

FAST = ["--workers", "0", "--patches", "4"]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three noise JPEGs and a PNG; do not modify them."""
    return make_good_folder(tmp_path_factory.mktemp("limits") / "good")


def scan_json(runner, paths: list[Path], *extra: Any) -> dict[str, dict[str, Any]]:
    """Scan with -f json -q; records by file name."""
    result = invoke(runner, ["scan", *paths, "-f", "json", "-q", *FAST, *extra])
    assert result.exit_code in (0, 1, 3, 4), result.stderr
    return {Path(r["path"]).name: r for r in parse_json_stdout(result.stdout)["results"]}


def jpeg_bytes(seed: int = 1, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise_array(seed=seed)).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# 1. Only image formats are opened, whatever the file is named
# ---------------------------------------------------------------------------

def _ico() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise_array((32, 32))).save(buffer, "ICO")
    return buffer.getvalue()


def _pdf() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise_array((64, 64))).save(buffer, "PDF")
    return buffer.getvalue()


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
       b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>\n'


@pytest.mark.parametrize(("data", "name"), [
    (EPS, "EPS/PostScript"), (_pdf(), "PDF"), (SVG, "SVG"), (_ico(), "ICO")])
def test_other_formats_named_jpg_are_refused_unread(runner, tmp_path, monkeypatch, data,
                                                    name) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an EPS decoder (Ghostscript) was invoked")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    record = scan_json(runner, [path])["photo.jpg"]
    assert record["verdict"] == "error"
    assert record["error"].startswith(f"unsupported format: {name}")


def test_image_formats_still_open(runner, good, tmp_path) -> None:
    webp, bmp, tiff = tmp_path / "a.webp", tmp_path / "b.bmp", tmp_path / "c.tif"
    for path in (webp, bmp, tiff):
        Image.fromarray(noise_array()).save(path)
    records = scan_json(runner, [*good, webp, bmp, tiff])
    assert {r["format"] for r in records.values()} == {"JPEG", "PNG", "WEBP", "BMP", "TIFF"}
    assert all(r["verdict"] != "error" for r in records.values())


# ---------------------------------------------------------------------------
# 2. Damaged files: a note, never a decisive verdict, nothing on stderr
# ---------------------------------------------------------------------------

def _damaged_jpegs(folder: Path) -> list[Path]:
    data = jpeg_bytes()
    flipped = bytearray(data)
    start = data.find(b"\xff\xda") + 20
    for offset in (300, 900, 1500, 2600):
        flipped[start + offset] ^= 0x55
    huge = bytearray(data)
    frame = data.find(b"\xff\xc0")
    huge[frame + 5 : frame + 9] = struct.pack(">HH", 15000, 15000)
    files = {"cut_mid_scan.jpg": data[: len(data) // 2] + b"\xff\xd9",
             "flipped.jpg": bytes(flipped), "declares_15000.jpg": bytes(huge)}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in files]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_damaged_jpegs_never_decide_and_stderr_stays_clean(runner, tmp_path, capfd,
                                                           workers) -> None:
    paths = _damaged_jpegs(tmp_path)
    capfd.readouterr()
    result = invoke(runner, ["scan", *paths, "-f", "jsonl", "-q", "--patches", "4",
                             "--workers", workers])
    printed = capfd.readouterr()
    assert result.stderr == "" and printed.err == ""
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == [p.name for p in paths]
    for record in records:
        damaged = [n for n in record["notes"] if n.startswith("damaged: ")]
        assert record["verdict"] == "error" or (damaged and record["verdict"] == "uncertain"), \
            record
    assert any("Corrupt JPEG data" in n for r in records for n in r["notes"])


def test_a_damaged_note_caps_the_verdict() -> None:
    assert capped("ai", ["damaged: Corrupt JPEG data: bad Huffman code"]) == "uncertain"
    assert capped("real", ["damaged: x"]) == "uncertain"
    assert capped("ai", ["alpha channel dropped"]) == "ai"
    assert capped("uncertain", ["damaged: x"]) == "uncertain"


def test_a_whole_file_gets_no_damage_note(runner, good) -> None:
    records = scan_json(runner, good)
    assert not any(n.startswith(("damaged", "decoder")) for r in records.values()
                   for n in r["notes"])


# ---------------------------------------------------------------------------
# 3. Bounded work per file
# ---------------------------------------------------------------------------

def sixteen_bit_png_header(path: Path, side: int = 15_800) -> Path:
    """A 16-bit greyscale PNG declaring ``side`` x ``side`` pixels (500 MB decoded,
    about 3 GB on the way to 8-bit RGB) whose data is a stub: it must be refused
    from its header, before any decoding."""
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
                     + png_chunk(b"IEND", b""))
    return path


def test_memory_ceiling_refuses_before_decoding(runner, good, tmp_path) -> None:
    big = sixteen_bit_png_header(tmp_path / "deep.png")
    records = scan_json(runner, [big, good[0]])
    assert records["deep.png"]["verdict"] == "error"
    assert "over --max-decode-mb 2048" in records["deep.png"]["error"]
    assert "decoding would need 2,996 MB" in records["deep.png"]["error"]
    assert records[good[0].name]["verdict"] != "error"  # the scan goes on


def test_a_file_bigger_than_the_decoding_budget_is_refused(runner, good, tmp_path) -> None:
    """A small JPEG padded with trailing bytes passes every header check; the decoder
    would still hold the whole file in memory."""
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good[0].read_bytes() + bytes(2_100_000))
    records = scan_json(runner, [padded, good[0]], "--max-decode-mb", "2")
    assert records["padded.jpg"]["verdict"] == "error"
    assert "file of 2 MB, over --max-decode-mb 2" in records["padded.jpg"]["error"]
    assert records[good[0].name]["verdict"] != "error"


def test_marker_count_across_chunk_boundaries() -> None:
    data = b"\xff\xda" * 3 + b"a\xff" + b"\xda" + bytes(range(256)) * 4
    for chunk in (1, 2, 3, 7, 1 << 20):
        assert count_marker(io.BytesIO(data), b"\xff\xda", chunk) == data.count(b"\xff\xda")


def test_progressive_jpeg_scans_are_bounded(runner, tmp_path) -> None:
    path = tmp_path / "progressive.jpg"
    path.write_bytes(jpeg_bytes(progressive=True))
    refused = scan_json(runner, [path], "--max-scans", "5")["progressive.jpg"]
    assert refused["verdict"] == "error"
    assert "over --max-scans 5" in refused["error"]
    assert scan_json(runner, [path])["progressive.jpg"]["verdict"] != "error"


def test_timeout_kills_a_stuck_decode_and_the_scan_goes_on(runner, good, tmp_path,
                                                           monkeypatch) -> None:
    real_load = features.load_image

    def load_image(path: Any, *args: Any) -> Any:
        if "stuck" in str(path):
            time.sleep(60)
        return real_load(path, *args)

    monkeypatch.setattr(features, "load_image", load_image)  # inherited by forked workers
    stuck = tmp_path / "stuck.jpg"
    stuck.write_bytes(good[0].read_bytes())
    order = [good[0], stuck, good[1], good[2]]
    started = time.monotonic()
    result = invoke(runner, ["scan", *order, "-f", "jsonl", "-q", "--patches", "4",
                             "--workers", "2", "--timeout", "1"])
    assert time.monotonic() - started < 40
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in order]
    assert records[1]["verdict"] == "error"
    assert "over the --timeout of 1 s" in records[1]["error"]
    assert all(r["verdict"] != "error" for r in records[:1] + records[2:])
    # which file it was stays on record (custody, --resume), and so does the time it took
    assert records[1]["sha256"] == hashlib.sha256(stuck.read_bytes()).hexdigest()
    assert (records[1]["size"], records[1]["mtime_ns"]) == (stuck.stat().st_size,
                                                            stuck.stat().st_mtime_ns)
    assert records[1]["elapsed_ms"] >= 1000


def test_animated_gif_is_not_walked(runner, tmp_path) -> None:
    frames = [Image.fromarray(noise_array((128, 96), seed=s)).convert("P") for s in (1, 2, 3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    record = scan_json(runner, [tmp_path / "anim.gif"])["anim.gif"]
    assert "several frames: first frame used" in record["notes"]


# ---------------------------------------------------------------------------
# 4. The run header
# ---------------------------------------------------------------------------

RUN_KEYS = {"aigdetect_version", "command", "host", "started", "finished", "detector",
            "threshold", "model", "settings", "counts"}


def check_run(run: dict[str, Any], files: int) -> None:
    assert set(run) >= RUN_KEYS
    assert run["started"].endswith("+00:00") and run["started"] <= run["finished"]
    assert run["detector"] in DETECTOR_NAMES
    assert isinstance(run["threshold"], float) and isinstance(run["component_thresholds"], dict)
    assert run["model"]["extractor_sha256"]
    assert run["counts"]["files"] == files
    assert sum(run["counts"][v] for v in ("ai", "uncertain", "real", "error")) == files
    assert run["settings"]["max_decode_mb"] == 2048


def test_json_has_a_run_header(runner, good) -> None:
    result = invoke(runner, ["scan", *good, "-f", "json", "-q", *FAST])
    document = parse_json_stdout(result.stdout)
    check_run(document["run"], len(good))
    assert document["run"]["counts"]["skipped"] == 0


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_jsonl_and_csv_get_a_sidecar(runner, good, tmp_path, fmt) -> None:
    out = tmp_path / f"results.{fmt}"
    invoke(runner, ["scan", *good, "-f", fmt, "-o", out, "-q", *FAST])
    sidecar = json.loads((tmp_path / f"results.{fmt}.run.json").read_text())
    check_run(sidecar["run"], len(good))
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_table_gets_no_sidecar(runner, good, tmp_path) -> None:
    out = tmp_path / "results.txt"
    invoke(runner, ["scan", *good, "-o", out, "-q", *FAST])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_resume_keeps_earlier_run_headers(runner, good, tmp_path) -> None:
    out = tmp_path / "results.jsonl"
    invoke(runner, ["scan", *good[:2], "-f", "jsonl", "-o", out, "-q", *FAST])
    invoke(runner, ["scan", *good, "-f", "jsonl", "-o", out, "--resume", "-q", *FAST])
    sidecar = json.loads((tmp_path / "results.jsonl.run.json").read_text())
    assert sidecar["run"]["counts"]["skipped"] == 2
    assert sidecar["run"]["counts"]["files"] == len(good)
    assert [run["counts"]["files"] for run in sidecar["earlier_runs"]] == [2]


def test_an_existing_sidecar_is_not_replaced_without_overwrite(runner, good, tmp_path) -> None:
    out = tmp_path / "results.jsonl"
    (tmp_path / "results.jsonl.run.json").write_text("earlier\n")
    refused = invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", out, *FAST])
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    assert (tmp_path / "results.jsonl.run.json").read_text() == "earlier\n"


def test_ctrl_c_still_writes_the_sidecar(runner, good, tmp_path, monkeypatch) -> None:
    from aigdetect.cli import scan as scan_cli

    real_scan = scan_cli.scan

    def scan(*args: Any, **kwargs: Any):
        for number, record in enumerate(real_scan(*args, **kwargs)):
            if number == 1:
                raise KeyboardInterrupt
            yield record

    monkeypatch.setattr(scan_cli, "scan", scan)
    out = tmp_path / "results.jsonl"
    result = invoke(runner, ["scan", *good, "-f", "jsonl", "-o", out, "-q", *FAST])
    assert result.exit_code == EXIT_INTERRUPTED
    run = json.loads((tmp_path / "results.jsonl.run.json").read_text())["run"]
    assert run["interrupted"] is True and run["counts"]["files"] == 1
