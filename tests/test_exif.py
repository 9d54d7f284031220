"""EXIF labels: reading, normalising and the categorical vocabularies."""

from __future__ import annotations

import math
import struct
from dataclasses import fields
from fractions import Fraction

import piexif
import pytest
from PIL import TiffImagePlugin

from aigdetect.exif import (
    CATEGORICAL_TAGS,
    ORDINAL_TAGS,
    OTHER,
    ExifLabels,
    Vocabulary,
    build_vocabularies,
    labels_from_raw,
    normalise_make,
    normalise_model,
    plausible_exif,
    read_labels,
    read_raw_exif,
    to_number,
)

FULL_EXIF = {
    "Make": "Canon",
    "Model": "Canon EOS 5D Mark II",
    "FNumber": (28, 10),
    "ExposureTime": (1, 250),
    "ISOSpeedRatings": 400,
    "FocalLength": (50, 1),
    "FocalLengthIn35mmFilm": 75,
    "Flash": 25,
    "ExposureProgram": 3,
    "MeteringMode": 5,
    "WhiteBalance": 1,
    "ExposureMode": 2,
    "SceneCaptureType": 3,
}


def all_none(labels: ExifLabels) -> bool:
    return all(getattr(labels, f.name) is None for f in fields(labels))


def ascii_exif_blob(entries: list[tuple[int, bytes]]) -> bytes:
    """A hand-made little-endian EXIF blob whose IFD0 holds ASCII tags written
    *exactly* as given (piexif.dump always appends a NUL; real cameras may not)."""
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd, data = struct.pack("<H", len(entries)), b""
    for tag, value in entries:
        if len(value) <= 4:
            ifd += struct.pack("<HHI", tag, 2, len(value)) + value.ljust(4, b"\x00")
        else:
            ifd += struct.pack("<HHII", tag, 2, len(value), data_offset + len(data))
            data += value + b"\x00" * (len(value) % 2)
    ifd += struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + data


# ---------------------------------------------------------------------------
# Files written with piexif
# ---------------------------------------------------------------------------

def test_well_formed_jpeg_gives_every_label(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "full.jpg", exif=FULL_EXIF)
    labels = read_labels(path)
    assert labels.make == "canon"
    assert labels.model == "canon eos 5d mark ii"
    assert labels.fnumber == pytest.approx(2.8)
    assert labels.exposure_time == pytest.approx(1 / 250)
    assert labels.iso == pytest.approx(400)
    assert labels.focal_length == pytest.approx(50)
    assert labels.focal_length_35mm == pytest.approx(75)
    assert labels.flash == "fired"
    assert labels.exposure_program == "aperture priority"
    assert labels.metering_mode == "pattern"
    assert labels.white_balance == "manual"
    assert labels.exposure_mode == "auto bracket"
    assert labels.scene_capture_type == "night"
    assert labels.known_count() == len(fields(ExifLabels))
    assert labels.camera == "canon | canon eos 5d mark ii"


def test_zero_denominator_drops_only_that_tag(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "zero.jpg", exif={**FULL_EXIF, "FNumber": (28, 0)})
    labels = read_labels(path)
    assert labels.fnumber is None
    # every other tag survives
    assert labels.exposure_time == pytest.approx(1 / 250)
    assert labels.iso == pytest.approx(400)
    assert labels.focal_length == pytest.approx(50)
    assert labels.make == "canon"
    assert labels.flash == "fired"
    assert labels.known_count() == len(fields(ExifLabels)) - 1


def test_exposure_time_rational_is_seconds_not_its_denominator(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "exp.jpg", exif={"ExposureTime": (1, 60)})
    labels = read_labels(path)
    assert labels.exposure_time == pytest.approx(1 / 60, rel=1e-9)
    assert labels.exposure_time == pytest.approx(0.0167, abs=1e-4)
    assert labels.exposure_time != pytest.approx(60)


def test_iso_from_iso_speed_ratings_tag(tmp_path, make_jpeg):
    assert piexif.ExifIFD.ISOSpeedRatings == 34855
    path = make_jpeg(tmp_path / "iso.jpg", exif={"Exif": {piexif.ExifIFD.ISOSpeedRatings: 1600}})
    assert read_raw_exif(path)["ISOSpeedRatings"] == 1600
    assert read_labels(path).iso == 1600.0


def test_iso_from_photographic_sensitivity_name():
    # EXIF 2.3 renamed tag 34855 PhotographicSensitivity; readers may use either name.
    assert labels_from_raw({"PhotographicSensitivity": 800}).iso == 800.0
    assert labels_from_raw({"PhotographicSensitivity": (3200,)}).iso == 3200.0
    # both present: the ISOSpeedRatings reading wins
    assert labels_from_raw({"ISOSpeedRatings": 100, "PhotographicSensitivity": 800}).iso == 100.0


def test_iso_written_as_two_shorts_is_not_a_ratio(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "iso2.jpg",
                     exif={"Exif": {piexif.ExifIFD.ISOSpeedRatings: (100, 100)}})
    assert read_raw_exif(path)["ISOSpeedRatings"] == (100, 100)
    assert read_labels(path).iso == 100.0


def test_absurd_values_become_none_and_others_survive(tmp_path, make_jpeg):
    exif = {**FULL_EXIF, "FNumber": (0, 1), "ISOSpeedRatings": 0, "FocalLength": (99999, 1),
            "ExposureTime": (4294967295, 1)}
    labels = read_labels(make_jpeg(tmp_path / "absurd.jpg", exif=exif))
    assert labels.fnumber is None
    assert labels.iso is None
    assert labels.focal_length is None
    assert labels.exposure_time is None
    assert labels.focal_length_35mm == pytest.approx(75)
    assert labels.make == "canon"


@pytest.mark.parametrize("tag", sorted(ORDINAL_TAGS))
def test_ordinal_range_bounds(tag):
    raw_name = {
        "fnumber": "FNumber", "exposure_time": "ExposureTime", "iso": "ISOSpeedRatings",
        "focal_length": "FocalLength", "focal_length_35mm": "FocalLengthIn35mmFilm",
    }[tag]
    low, high = ORDINAL_TAGS[tag]
    assert getattr(labels_from_raw({raw_name: low}), tag) == low
    assert getattr(labels_from_raw({raw_name: high}), tag) == high
    assert getattr(labels_from_raw({raw_name: low / 2}), tag) is None
    assert getattr(labels_from_raw({raw_name: high * 2}), tag) is None
    assert getattr(labels_from_raw({raw_name: -1}), tag) is None


def test_wrong_types_give_none_per_tag():
    raw = {
        "FNumber": "f/2.8",  # a string in a rational field
        "ExposureTime": "fast",
        "ISOSpeedRatings": b"abc",
        "FocalLength": [],
        "FocalLengthIn35mmFilm": {"a": 1},
        "Flash": "yes",
        "ExposureProgram": 2.5,  # not an enumeration code
        "MeteringMode": None,
        "Make": 12345,
        "Model": b"\x00\x00  ",
        "WhiteBalance": 0,  # the one sound tag
    }
    labels = labels_from_raw(raw)
    assert labels.white_balance == "auto"
    assert labels.known_count() == 1


def test_string_rational_in_a_field_is_read_exactly():
    labels = labels_from_raw({"ExposureTime": "1/60", "FNumber": b"28/10\x00"})
    assert labels.exposure_time == pytest.approx(1 / 60)
    assert labels.fnumber == pytest.approx(2.8)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1/60", 1 / 60),
        (" 1/60 ", 1 / 60),
        (b"1/60\x00", 1 / 60),
        ("2.8", 2.8),
        ((1, 60), 1 / 60),
        ([(1, 60), (1, 30)], 1 / 60),
        ((200,), 200.0),
        (Fraction(1, 60), 1 / 60),
        (TiffImagePlugin.IFDRational(1, 60), 1 / 60),
        (400, 400.0),
        (2.8, 2.8),
        ((28, 0), None),
        ("1/0", None),
        ("abc", None),
        ("", None),
        (float("nan"), None),
        (float("inf"), None),
        (True, None),
        (None, None),
        ((), None),
        (object(), None),
    ],
)
def test_to_number(value, expected):
    result = to_number(value)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, rel=1e-12)


def test_to_number_ifdrational_zero_denominator():
    assert to_number(TiffImagePlugin.IFDRational(28, 0)) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("NIKON CORPORATION", "nikon"),
        ("EASTMAN KODAK COMPANY", "kodak"),
        ("Hewlett-Packard", "hp"),
        ("OLYMPUS OPTICAL CO.,LTD", "olympus"),
        ("OLYMPUS IMAGING CORP.  ", "olympus"),
        ("FUJI PHOTO FILM CO., LTD.", "fujifilm"),
        ("Canon", "canon"),
        (b"SONY\x00\x00\x00", "sony"),
        ("LGE", "lg"),
        ("Acme Imaging Corp.", "acme"),
        ("Zorki Optical Co., Ltd.", "zorki"),
        ("   ", None),
        (b"", None),
        (None, None),
        (42, None),
    ],
)
def test_normalise_make(raw, expected):
    assert normalise_make(raw) == expected


def test_ascii_tags_without_nul_terminator_keep_their_last_character(tmp_path):
    from PIL import Image

    path = tmp_path / "htc.jpg"
    blob = ascii_exif_blob([(piexif.ImageIFD.Make, b"HTC"),
                            (piexif.ImageIFD.Model, b"HTC One_M8")])
    Image.new("RGB", (16, 16)).save(path, exif=blob)
    with Image.open(path) as image:  # the file is sound: Pillow honours the count
        assert image.getexif()[piexif.ImageIFD.Model] == "HTC One_M8"
    labels = read_labels(path)
    assert labels.make == "htc"
    assert labels.model == "htc one_m8"


def test_ascii_value_ends_at_its_nul_terminator():
    labels = labels_from_raw({"Make": b"WWL\x00\x01x", "Model": b"ION230\x00F"})
    assert labels.make == "wwl"
    assert labels.model == "ion230"


def test_normalise_model_collapses_whitespace_and_case():
    assert normalise_model(b"NIKON  D90\x00\x00") == "nikon d90"
    assert normalise_model("\x00 ") is None


@pytest.mark.parametrize(
    ("flash", "expected"),
    [(16, "not fired"), (25, "fired"), (0, "not fired"), (1, "fired"), (24, "not fired"),
     (9, "fired"), (65536, None), (-1, None), ((1, 2), None)],
)
def test_flash_fired_bit(flash, expected):
    assert labels_from_raw({"Flash": flash}).flash == expected


@pytest.mark.parametrize(
    ("tag", "value", "expected"),
    [
        ("ExposureProgram", 0, None),  # "not defined"
        ("ExposureProgram", 2, "normal"),
        ("ExposureProgram", 9, None),  # outside the standard
        ("MeteringMode", 0, None),  # "unknown"
        ("MeteringMode", 255, "other"),
        ("WhiteBalance", 0, "auto"),
        ("ExposureMode", 1, "manual"),
        ("SceneCaptureType", 0, "standard"),
    ],
)
def test_enumerations(tag, value, expected):
    field = {"ExposureProgram": "exposure_program", "MeteringMode": "metering_mode",
             "WhiteBalance": "white_balance", "ExposureMode": "exposure_mode",
             "SceneCaptureType": "scene_capture_type"}[tag]
    assert getattr(labels_from_raw({tag: value}), field) == expected


def test_exposure_program_zero_in_a_file(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "ep0.jpg", exif={"ExposureProgram": 0, "Flash": 16})
    labels = read_labels(path)
    assert labels.exposure_program is None
    assert labels.flash == "not fired"


def test_file_without_exif_gives_all_none(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "plain.jpg", exif=None)
    assert read_raw_exif(path) == {}
    labels = read_labels(path)
    assert all_none(labels)
    assert labels.known_count() == 0
    assert labels.camera is None


def test_png_exif_chunk_read_through_pillow_fallback(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "shot.png", exif={**FULL_EXIF, "FNumber": (28, 0)})
    assert path.read_bytes().find(b"eXIf") > 0
    with pytest.raises(Exception):  # noqa: B017 - piexif cannot read PNG: the fallback must
        piexif.load(str(path))
    labels = read_labels(path)
    assert labels.make == "canon"
    assert labels.model == "canon eos 5d mark ii"
    assert labels.fnumber is None  # zero denominator through Pillow's IFDRational too
    assert labels.exposure_time == pytest.approx(1 / 250)
    assert labels.iso == pytest.approx(400)
    assert labels.focal_length == pytest.approx(50)
    assert labels.flash == "fired"
    assert labels.scene_capture_type == "night"


def test_webp_with_exif(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "shot.webp", exif=FULL_EXIF)
    labels = read_labels(path)
    assert labels.make == "canon"
    assert labels.fnumber == pytest.approx(2.8)
    assert labels.exposure_time == pytest.approx(1 / 250)
    assert labels.iso == pytest.approx(400)


@pytest.mark.parametrize(
    "content", [b"", b"hello, I am not an image\n", b"\xff\xd8\xff\xe1garbage"]
)
def test_non_image_gives_all_none_without_raising(tmp_path, content):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    assert read_raw_exif(path) == {}
    assert all_none(read_labels(path))


def test_missing_file_and_directory_give_all_none(tmp_path):
    assert all_none(read_labels(tmp_path / "missing.jpg"))
    assert all_none(read_labels(tmp_path))


def test_reading_does_not_modify_the_file(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "evidence.jpg", exif=FULL_EXIF)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    path.chmod(0o444)
    read_labels(path)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime


def test_labels_dict_round_trip_ignores_unknown_keys():
    labels = labels_from_raw({"Make": "Canon", "Model": "EOS R5", "FNumber": (4, 1)})
    data = labels.to_dict()
    assert ExifLabels.from_dict({**data, "not_a_tag": 1}) == labels
    assert ExifLabels.from_dict({}) == ExifLabels()


def test_camera_without_make():
    assert ExifLabels(model="x100").camera == "? | x100"


# ---------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------

def test_vocabulary_folds_rare_values_into_other():
    values = ["a"] * 3 + ["b"] * 5 + ["c"] * 2 + ["d"] + [None] * 4
    vocab = Vocabulary.build(values, min_count=3)
    assert vocab.classes == ["a", "b", OTHER]
    assert len(vocab) == 3
    assert vocab.index("a") == 0
    assert vocab.index("b") == 1
    assert vocab.index("c") == vocab.classes.index(OTHER)  # rare
    assert vocab.index("never seen") == vocab.classes.index(OTHER)  # unseen
    assert vocab.index(None) == -1


def test_vocabulary_without_rare_values_still_maps_unseen_values_to_other():
    vocab = Vocabulary.build(["x", "y", "x", "y"], min_count=2)
    assert vocab.classes == ["x", "y", OTHER]
    assert vocab.index("a new camera") == vocab.classes.index(OTHER)
    assert vocab.index(None) == -1


def test_vocabulary_of_no_values_is_just_other():
    vocab = Vocabulary.build([None, None], min_count=1)
    assert vocab.classes == [OTHER]
    assert vocab.index("anything") == 0
    assert vocab.index(None) == -1


def test_vocabulary_literal_other_value_is_not_duplicated():
    vocab = Vocabulary.build([OTHER] * 5 + ["a"] * 5, min_count=2)
    assert vocab.classes == ["a", OTHER]


def test_build_vocabularies_covers_every_categorical_tag():
    labels = [labels_from_raw({"Make": "Canon", "Flash": 16})] * 3 + [
        labels_from_raw({"Make": "Nikon", "Flash": 1})
    ]
    vocabs = build_vocabularies(labels, min_count=2)
    assert set(vocabs) == set(CATEGORICAL_TAGS)
    assert vocabs["make"].classes == ["canon", OTHER]
    assert vocabs["make"].index("nikon") == 1
    assert vocabs["flash"].classes == ["not fired", OTHER]
    assert vocabs["model"].classes == [OTHER]


# ---------------------------------------------------------------------------
# Real photos (shared corpus; skipped when absent)
# ---------------------------------------------------------------------------

MANIFEST_COLUMNS = {
    "FNumber": "fnumber",
    "ExposureTime": "exposure_time",
    "ISOSpeedRatings": "iso",
    "FocalLength": "focal_length",
}


def test_real_photos_match_manifest(shared_manifest):
    compared = 0
    for row in shared_manifest:
        labels = read_labels(row["file"])
        for column, tag in MANIFEST_COLUMNS.items():
            if not row.get(column):
                continue
            expected = float(row[column])
            low, high = ORDINAL_TAGS[tag]
            value = getattr(labels, tag)
            if math.isfinite(expected) and low <= expected <= high:
                assert value == pytest.approx(expected, rel=1e-3), (row["path"], column)
                compared += 1
            else:  # the manifest records an absurd reading (0, 2^32-1...): masked
                assert value is None, (row["path"], column, value)
    assert compared >= 10


def test_real_photos_categorical_labels_are_sound(shared_manifest):
    makes = set()
    for row in shared_manifest[:80]:
        labels = read_labels(row["file"])
        for tag in CATEGORICAL_TAGS:
            value = getattr(labels, tag)
            assert value is None or (isinstance(value, str) and value == value.strip() != "")
        if labels.make:
            makes.add(labels.make)
    assert makes  # some real photos carry a make


def test_real_photos_make_and_model_match_manifest(shared_manifest):
    wrong = []
    for row in shared_manifest:
        labels = read_labels(row["file"])
        if row.get("Make") and labels.make != normalise_make(row["Make"].split("\x00")[0]):
            wrong.append((row["path"], row["Make"], labels.make))
        if row.get("Model") and labels.model != normalise_model(row["Model"].split("\x00")[0]):
            wrong.append((row["path"], row["Model"], labels.model))
    assert not wrong


def test_a_tag_declaring_millions_of_values_never_reaches_piexif(tmp_path, monkeypatch):
    """piexif builds a struct format of one character per declared value before it
    reads: 2^24 SHORTs in a 2 KB file cost half a gigabyte. Pillow reads such a block
    (it checks the data is there); the sound tags still come through."""
    from PIL import Image

    entries = struct.pack("<H", 2)
    entries += struct.pack("<HHI", piexif.ImageIFD.Make, 2, 4) + b"Sony"
    entries += struct.pack("<HHII", 0x0132, 3, 2**24, 8)  # a SHORT tag claiming 2^24 values
    blob = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + entries + struct.pack("<I", 0)
    path = tmp_path / "claims.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=blob)

    handed: list[bytes] = []  # recorded, not raised: read_raw_exif survives piexif errors
    monkeypatch.setattr(piexif, "load", lambda block, *args, **kwargs: handed.append(block))
    assert read_raw_exif(path)["Make"] == "Sony"
    assert handed == []
    assert not plausible_exif(blob)


def test_plausible_exif_accepts_what_cameras_write() -> None:
    assert plausible_exif(piexif.dump({"0th": {}}))
    assert plausible_exif(piexif.dump({"0th": {piexif.ImageIFD.Make: b"Canon"},
                                       "Exif": {piexif.ExifIFD.ISOSpeedRatings: 100}}))
    assert not plausible_exif(b"Exif\x00\x00junk")


def test_plausible_exif_follows_the_exif_sub_directory() -> None:
    """The oversized tag may hide in the Exif sub-IFD, which IFD0 only points to."""
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, 26) + struct.pack("<I", 0)
    sub = struct.pack("<H", 1) + struct.pack("<HHII", 0x8827, 3, 2**24, 8) + struct.pack("<I", 0)
    blob = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + sub
    assert len(b"II*\x00") + 4 + len(ifd0) == 26  # where the pointer says the sub-IFD is
    assert not plausible_exif(blob)
