"""Metadata provenance readers on files the tests build, and ``scan --provenance``."""

from __future__ import annotations

import importlib.util
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import exif_bytes, write_image
from helpers_images import invoke, parse_json_stdout, snapshot
from PIL import Image, ImageFile, PngImagePlugin
from typer.testing import CliRunner

from aigdetect.provenance import CAVEAT, read_provenance, short_summary, xmp_packets

XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
       b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/'
       b'Iptc4xmpExt/2008-02-29/" Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/'
       b'digitalsourcetype/trainedAlgorithmicMedia"/></rdf:RDF></x:xmpmeta>'
       b'<?xpacket end="w"?>')
CAMERA = {"Make": "Canon", "Model": "Canon EOS 5D", "ExposureTime": (1, 250),
          "FNumber": (28, 10), "ISOSpeedRatings": 100, "FocalLength": (50, 1)}


def png_with_text(path: Path, chunks: dict[str, str], exif: dict | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    options = {"exif": exif_bytes(exif)} if exif else {}
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(path, pnginfo=info, **options)
    return path


def test_stable_diffusion_parameters_chunk(tmp_path: Path) -> None:
    path = png_with_text(tmp_path / "a1111.png", {
        "parameters": "a lighthouse at dusk\nSteps: 30, Sampler: DPM++ 2M, CFG scale: 7"})
    found = read_provenance(path)
    assert found["caveat"] == CAVEAT and found["container"] == "PNG"
    [chunk] = found["generator_text"]
    assert chunk["chunk"] == "parameters" and "Stable Diffusion web UI" in chunk["generator"]
    assert "Steps: 30" in chunk["excerpt"]
    assert any("parameters" in line for line in found["findings"])
    assert found["camera_exif"]["status"] == "absent"


def test_comfyui_prompt_and_workflow(tmp_path: Path) -> None:
    path = png_with_text(tmp_path / "comfy.png", {
        "prompt": '{"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}',
        "workflow": '{"nodes": []}'})
    generators = {c["chunk"]: c["generator"] for c in read_provenance(path)["generator_text"]}
    assert set(generators) == {"prompt", "workflow"}
    assert all("ComfyUI" in g for g in generators.values())


def test_long_text_is_cut_to_an_excerpt(tmp_path: Path) -> None:
    path = png_with_text(tmp_path / "long.png", {"parameters": "word " * 500})
    assert len(read_provenance(path)["generator_text"][0]["excerpt"]) <= 300


def test_xmp_digital_source_type_in_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "xmp.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(path, "JPEG", xmp=XMP)
    found = read_provenance(path)
    assert found["digital_source_type"] == ["trainedAlgorithmicMedia"]
    assert "XMP DigitalSourceType trainedAlgorithmicMedia (AI-generated)" in found["findings"]
    # a composite with AI parts (a camera photo edited with generative fill) is not
    # called AI-generated
    composite = tmp_path / "composite.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(
        composite, "JPEG", xmp=XMP.replace(b"/trainedAlgorithmicMedia",
                                          b"/compositeWithTrainedAlgorithmicMedia"))
    [line] = read_provenance(composite)["findings"]
    assert "includes AI-generated parts" in line and "(AI-generated)" not in line


def test_exif_software_naming_a_generator(tmp_path: Path) -> None:
    path = write_image(tmp_path / "gen.jpg", exif={"Software": "Midjourney v6"})
    found = read_provenance(path)
    [tag] = found["software"]
    assert (tag["tag"], tag["kind"], tag["names"]) == ("EXIF Software", "generator", "midjourney")
    assert any("Midjourney v6" in line for line in found["findings"])


def test_editor_is_named_as_an_editor(tmp_path: Path) -> None:
    path = write_image(tmp_path / "edit.jpg", exif={**CAMERA, "Software": "Adobe Photoshop 25.0"})
    found = read_provenance(path)
    assert found["software"][0]["kind"] == "editor"
    assert found["camera_exif"]["status"] == "present"


def test_camera_photo_has_no_finding(tmp_path: Path) -> None:
    found = read_provenance(write_image(tmp_path / "cam.jpg", exif=CAMERA))
    camera = found["camera_exif"]
    assert (camera["status"], camera["make"], camera["model"]) == ("present", "canon",
                                                                   "canon eos 5d")
    assert (camera["make_tag"], camera["model_tag"]) == ("Canon", "Canon EOS 5D")  # as stored
    assert found["findings"] == []
    assert short_summary(found) == "camera EXIF present"


def test_camera_exif_beside_a_generator_or_without_exposure_is_inconsistent(
        tmp_path: Path) -> None:
    beside = read_provenance(write_image(tmp_path / "mj.jpg",
                                         exif={**CAMERA, "Software": "Midjourney v6"}))
    assert beside["camera_exif"]["reasons"] == ["camera EXIF beside a generator's metadata"]
    make_only = read_provenance(write_image(tmp_path / "make.jpg", exif={"Make": "Canon"}))
    assert make_only["camera_exif"]["status"] == "inconsistent"
    assert make_only["camera_exif"]["reasons"] == ["a camera make but no exposure tags"]


def test_a_generator_named_in_a_plain_png_text_chunk(tmp_path: Path) -> None:
    found = read_provenance(png_with_text(tmp_path / "c.png", {"Software": "ComfyUI",
                                                               "Title": "holiday"}))
    assert [(c["chunk"], c["generator"]) for c in found["generator_text"]] == [
        ("Software", "comfyui")]


def test_camera_make_inside_a_png_is_inconsistent(tmp_path: Path) -> None:
    found = read_provenance(png_with_text(tmp_path / "cam.png", {}, exif=CAMERA))
    camera = found["camera_exif"]
    assert camera["status"] == "inconsistent"
    assert any("PNG" in reason for reason in camera["reasons"])


def test_readers_leave_the_file_untouched_and_survive_junk(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    photo = write_image(tmp_path / "cam.jpg", exif=CAMERA)
    before = snapshot([junk, photo])
    assert read_provenance(junk)["container"] is None
    read_provenance(photo)
    assert snapshot([junk, photo]) == before


def png_chunk(cid: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data))


def test_png_metadata_after_the_pixels_is_read_without_decoding_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few hundred bytes declaring 40000 x 40000 pixels, its text and EXIF after the
    image data: Pillow would decode 4.8 GB to reach them; the readers must not decode
    at all (the decompression-bomb guard applies to pixels, and this reads none)."""
    exif = exif_bytes(CAMERA)
    exif = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
                     + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + png_chunk(b"tEXt", b"parameters\x00a lighthouse\nSteps: 30")
                     + png_chunk(b"eXIf", exif) + png_chunk(b"IEND", b""))

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("a metadata reader decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    found = read_provenance(path)
    assert [c["chunk"] for c in found["generator_text"]] == ["parameters"]
    assert found["camera_exif"]["make"] == "canon"
    assert found["camera_exif"]["status"] == "inconsistent"  # camera tags in a PNG


def test_a_text_chunk_too_large_to_inflate_is_skipped_not_the_rest(tmp_path: Path) -> None:
    """A zTXt chunk inflating to 200 MB (Pillow refuses it) must not hide the chunks
    after it, nor the XMP of a compressed iTXt chunk, which no byte search can see."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode(), zip=True)
    path = tmp_path / "chunks.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(path, pnginfo=info)
    data = path.read_bytes()
    end = data.rfind(b"IEND") - 4
    bomb = b"junk\x00\x00" + zlib.compress(b"a" * (200 * 1024 * 1024))
    after = b"parameters\x00a lighthouse\nSteps: 30"
    path.write_bytes(data[:end] + png_chunk(b"zTXt", bomb) + png_chunk(b"tEXt", after)
                     + data[end:])
    found = read_provenance(path)
    assert [c["chunk"] for c in found["generator_text"]] == ["parameters"]
    assert found["digital_source_type"] == ["trainedAlgorithmicMedia"]


def test_a_fifo_named_like_an_image_is_not_opened(tmp_path: Path) -> None:
    """Opening a FIFO blocks until something writes to it: the batch would hang."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    results: list[dict | None] = []
    reader = threading.Thread(target=lambda: results.append(read_provenance(fifo)),
                              daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert results == [None], "read_provenance blocked on a FIFO, or claimed findings"


def test_a_file_not_read_has_no_provenance_record(tmp_path: Path) -> None:
    """Missing, or over the size limit: nothing was read, so nothing is claimed (a
    C2PA status "absent" would say the file has no credentials)."""
    path = write_image(tmp_path / "cam.jpg", exif=CAMERA)
    assert read_provenance(tmp_path / "gone.jpg") is None
    assert read_provenance(path, max_bytes=path.stat().st_size - 1) is None
    assert read_provenance(path, max_bytes=path.stat().st_size) is not None


def test_xmp_packets_are_found_in_linear_time() -> None:
    data = (b"junk <x:xmpmeta a='1'>one</x:xmpmeta> more <x:xmpmeta>two</x:xmpmeta>"
            b" <x:xmpmeta never closed")
    assert list(xmp_packets(data)) == [b"<x:xmpmeta a='1'>one</x:xmpmeta>",
                                       b"<x:xmpmeta>two</x:xmpmeta>"]
    # a lazy regular expression took minutes on a megabyte of unclosed openings
    assert list(xmp_packets(b"<x:xmpmeta" * 100_000)) == []


def test_c2pa_status_without_credentials(tmp_path: Path) -> None:
    """No signed sample here: c2pa-python signs only with an X.509 chain meeting the C2PA
    certificate profile and ships no test certificate, so a signed file belongs in a
    corpus test; the reader is exercised on files without credentials."""
    status = read_provenance(write_image(tmp_path / "cam.jpg", exif=CAMERA))["c2pa"]["status"]
    installed = importlib.util.find_spec("c2pa") is not None
    assert status == ("absent" if installed else "unavailable")


def test_scan_provenance_field_and_column(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    png_with_text(evidence / "gen.png", {"parameters": "a cat, Steps: 20"})
    runner = CliRunner()
    common = ["scan", evidence, "--patches", "1", "--workers", "0", "--provenance"]
    document = parse_json_stdout(invoke(runner, [*common, "-f", "json"]).stdout)
    [record] = document["results"]
    assert record["provenance"]["generator_text"][0]["chunk"] == "parameters"
    table = invoke(runner, common).stdout
    assert "metadata" in table and "parameters" in table
    plain = parse_json_stdout(invoke(runner, [*common[:-1], "-f", "json"]).stdout)
    assert plain["results"][0]["provenance"] is None
