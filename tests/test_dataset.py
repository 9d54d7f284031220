"""Training data: cached labels, the camera-disjoint split and the patch dataset."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import aigdetect.dataset as dataset_module
from aigdetect.dataset import (
    CACHE_VERSION,
    Photo,
    PretextDataset,
    encode_targets,
    load_labels,
    split_by_camera,
)
from aigdetect.exif import CATEGORICAL_TAGS, ORDINAL_TAGS, ExifLabels, build_vocabularies
from aigdetect.files import atomic_write


def image_paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


def forbid_reading(monkeypatch):
    def fail(path):
        raise AssertionError(f"read_labels called again for {path}")

    monkeypatch.setattr(dataset_module, "read_labels", fail)


# ---------------------------------------------------------------------------
# load_labels
# ---------------------------------------------------------------------------

def test_load_labels_parses_and_caches(photo_folder, tmp_path, monkeypatch):
    paths = image_paths(photo_folder)
    assert len(paths) == 12
    cache = tmp_path / "cache" / "labels.json"
    progress: list[tuple[int, int]] = []
    photos, unreadable = load_labels(paths, cache, on_progress=lambda i, n: progress.append((i, n)))
    assert unreadable == []
    assert [p.path for p in photos] == [str(p) for p in paths]
    assert progress == [(i, 12) for i in range(1, 13)]
    assert {p.labels.camera for p in photos} == {
        "canon | canon eos 5d", "nikon | nikon d90", "apple | iphone 6s", "fujifilm | x-t2",
    }
    first = next(p for p in photos if p.path.endswith("Canon_EOS_5D/IMG_0000.jpg"))
    assert first.labels.fnumber == pytest.approx(2.8)
    assert first.labels.exposure_time == pytest.approx(1 / 250)

    stored = json.loads(cache.read_text())
    assert stored["version"] == CACHE_VERSION
    assert len(stored["entries"]) == 12
    assert not list(cache.parent.glob(".*.tmp"))  # atomic write left no temporary file

    forbid_reading(monkeypatch)
    again, unreadable_again = load_labels(paths, cache)
    assert again == photos
    assert unreadable_again == []


def test_changed_file_is_reparsed_alone(photo_folder, tmp_path, monkeypatch, make_jpeg):
    paths = image_paths(photo_folder)
    cache = tmp_path / "labels.json"
    load_labels(paths, cache)
    target = paths[0]
    make_jpeg(target, size=(160, 128), exif={"Make": "Pentax", "Model": "K-1"}, seed=99)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    calls: list[str] = []
    real = dataset_module.read_labels

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(dataset_module, "read_labels", counting)
    photos, _ = load_labels(paths, cache)
    assert calls == [str(target)]
    assert photos[0].labels.make == "pentax"


def test_corrupt_cache_is_rebuilt(photo_folder, tmp_path):
    paths = image_paths(photo_folder)[:3]
    cache = tmp_path / "labels.json"
    cache.write_text("{ not json")
    photos, _ = load_labels(paths, cache)
    assert len(photos) == 3
    assert json.loads(cache.read_text())["version"] == CACHE_VERSION


def test_cache_of_another_version_is_ignored(photo_folder, tmp_path):
    paths = image_paths(photo_folder)[:2]
    cache = tmp_path / "labels.json"
    bogus = {str(p.resolve()): {"signature": [p.stat().st_size, p.stat().st_mtime_ns],
                                "value": {"make": "bogus"}} for p in paths}
    cache.write_text(json.dumps({"version": CACHE_VERSION + 1, "entries": bogus}))
    photos, _ = load_labels(paths, cache)
    assert all(p.labels.make != "bogus" for p in photos)


def test_unreadable_files_are_listed_and_cached(photo_folder, tmp_path, monkeypatch):
    garbage = photo_folder / "garbage.jpg"
    garbage.write_bytes(os.urandom(2048))
    empty = photo_folder / "empty.jpg"
    empty.write_bytes(b"")
    missing = photo_folder / "vanished.jpg"
    paths = [*image_paths(photo_folder), missing]
    cache = tmp_path / "labels.json"
    photos, unreadable = load_labels(paths, cache)
    assert set(unreadable) == {str(garbage), str(empty), str(missing)}
    assert len(photos) == 12
    assert str(garbage) not in {p.path for p in photos}

    forbid_reading(monkeypatch)
    photos_again, unreadable_again = load_labels(paths, cache)
    assert set(unreadable_again) == set(unreadable)
    assert len(photos_again) == 12


def test_load_labels_without_cache(photo_folder):
    photos, unreadable = load_labels(image_paths(photo_folder)[:2], None)
    assert len(photos) == 2 and unreadable == []


def test_atomic_write(tmp_path):
    target = tmp_path / "deep" / "out.json"
    for data in ({"a": [1, 2]}, {"a": [3]}):
        with atomic_write(target) as temporary:
            temporary.write_text(json.dumps(data))
    assert json.loads(target.read_text()) == {"a": [3]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# ---------------------------------------------------------------------------
# split_by_camera
# ---------------------------------------------------------------------------

def synthetic_photos(sizes: dict[str, int], anonymous: int = 0) -> list[Photo]:
    photos = []
    for camera, count in sizes.items():
        make, model = camera.split("/")
        photos += [Photo(f"/x/{camera}/{i}.jpg", ExifLabels(make=make, model=model))
                   for i in range(count)]
    photos += [Photo(f"/x/anon/{i}.jpg", ExifLabels(iso=100.0 * (i + 1)))
               for i in range(anonymous)]
    return photos


def camera_of(photo: Photo) -> str:
    return photo.labels.camera or f"file:{photo.path}"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_keeps_every_camera_on_one_side(seed):
    sizes = {f"make{i % 3}/model{i}": 1 + (i * 7) % 9 for i in range(12)}
    photos = synthetic_photos(sizes, anonymous=5)
    train, val = split_by_camera(photos, 0.2, seed)
    assert sorted(p.path for p in train + val) == sorted(p.path for p in photos)
    assert {camera_of(p) for p in train}.isdisjoint({camera_of(p) for p in val})
    target = round(0.2 * len(photos))
    assert 0 < len(val) <= target
    assert len(val) >= target - max(sizes.values())  # roughly the asked share
    assert train


def test_split_is_deterministic_per_seed():
    photos = synthetic_photos({f"m/c{i}": 3 for i in range(10)})
    first = split_by_camera(photos, 0.3, seed=5)
    assert split_by_camera(photos, 0.3, seed=5) == first
    others = [split_by_camera(photos, 0.3, seed=s)[1] for s in range(6, 12)]
    assert any({p.path for p in v} != {p.path for p in first[1]} for v in others)


def test_split_of_the_photo_folder(photo_folder):
    photos, _ = load_labels(image_paths(photo_folder), None)
    train, val = split_by_camera(photos, 0.25, seed=0)
    assert len(val) == 3 and len(train) == 9  # exactly one of the 4 cameras held out
    assert len({p.labels.camera for p in val}) == 1
    assert {p.labels.camera for p in val}.isdisjoint({p.labels.camera for p in train})


def test_split_when_every_camera_exceeds_the_share():
    photos = synthetic_photos({"a/big": 10, "b/bigger": 20})
    train, val = split_by_camera(photos, 0.1, seed=0)
    assert [camera_of(p) for p in val] == ["a | big"] * 10  # the smallest camera
    assert len(train) == 20


def test_split_never_empties_the_training_side():
    photos = synthetic_photos({"a/one": 2, "b/two": 2})
    train, val = split_by_camera(photos, 0.9, seed=0)
    assert len(train) == 2 and len(val) == 2
    single = synthetic_photos({"a/only": 5})
    assert split_by_camera(single, 0.5, seed=0) == (single, [])


def test_zero_val_fraction_keeps_everything_for_training():
    photos = synthetic_photos({"a/x": 3, "b/y": 3})
    assert split_by_camera(photos, 0.0, seed=0) == (photos, [])


# ---------------------------------------------------------------------------
# encode_targets and PretextDataset
# ---------------------------------------------------------------------------

def test_encode_targets():
    labels = [ExifLabels(make="canon", flash="fired", iso=200.0, fnumber=2.8)] * 3 + [
        ExifLabels(make="nikon")
    ]
    vocabularies = build_vocabularies(labels, min_count=2)
    classes, ordinal = encode_targets(labels[0], vocabularies)
    assert classes.dtype == torch.long and classes.shape == (len(CATEGORICAL_TAGS),)
    assert ordinal.dtype == torch.float32 and ordinal.shape == (len(ORDINAL_TAGS),)
    tags = list(CATEGORICAL_TAGS)
    assert classes[tags.index("make")] == vocabularies["make"].index("canon")
    assert classes[tags.index("model")] == -1
    ordinals = list(ORDINAL_TAGS)
    assert ordinal[ordinals.index("iso")] == 200.0
    assert ordinal[ordinals.index("fnumber")] == pytest.approx(2.8)
    assert math.isnan(float(ordinal[ordinals.index("exposure_time")]))
    other_classes, _ = encode_targets(labels[3], vocabularies)
    assert other_classes[tags.index("make")] == vocabularies["make"].classes.index("other")


@pytest.fixture
def folder_photos(session_photo_folder) -> list[Photo]:
    photos, _ = load_labels(image_paths(session_photo_folder), None)
    return photos


def test_train_items_are_random_crops(folder_photos):
    vocabularies = build_vocabularies([p.labels for p in folder_photos], min_count=1)
    data = PretextDataset(folder_photos, vocabularies, patches=3, patch_size=64, train=True,
                          seed=7)
    assert len(data) == 12
    crops, classes, ordinal, attempt = data[4]
    assert crops.shape == (3, 3, 64, 64) and crops.dtype == torch.uint8
    assert classes.shape == (len(CATEGORICAL_TAGS),)
    assert ordinal.shape == (len(ORDINAL_TAGS),)
    assert attempt == 0
    expected_classes, expected_ordinal = encode_targets(folder_photos[4].labels, vocabularies)
    assert torch.equal(classes, expected_classes)
    torch.testing.assert_close(ordinal, expected_ordinal, equal_nan=True)
    assert (classes >= 0).sum() >= 4  # make, model, flash, exposure program, metering...


def test_train_crops_are_deterministic_per_seed_epoch_and_index(folder_photos):
    vocabularies = build_vocabularies([p.labels for p in folder_photos], min_count=1)

    def crops(seed: int, epoch: int, index: int) -> torch.Tensor:
        data = PretextDataset(folder_photos, vocabularies, 4, 32, train=True, seed=seed)
        data.set_epoch(epoch)
        return data[index][0]

    reference = crops(0, 0, 2)
    assert torch.equal(reference, crops(0, 0, 2))  # a fresh dataset, same draw
    assert not torch.equal(reference, crops(0, 1, 2))  # next epoch: new crops
    assert not torch.equal(reference, crops(1, 0, 2))  # other seed: new crops


def test_eval_items_are_grid_tiles_repeated_to_count(folder_photos, session_photo_folder):
    from aigdetect.patches import grid_tiles, load_image

    vocabularies = build_vocabularies([p.labels for p in folder_photos], min_count=1)
    pixels = load_image(folder_photos[0].path).pixels
    tiles = torch.from_numpy(grid_tiles(pixels, 64))
    assert len(tiles) == 4  # 160x128 -> 2 x 2 grid

    six = PretextDataset(folder_photos, vocabularies, 6, 64, train=False)[0][0]
    assert six.shape == (6, 3, 64, 64)
    assert torch.equal(six[:4], tiles)
    assert torch.equal(six[4:], tiles[:2])  # repeated to fill

    three = PretextDataset(folder_photos, vocabularies, 3, 64, train=False)
    assert three[0][0].shape == (3, 3, 64, 64)
    assert torch.equal(three[0][0], three[0][0])  # evaluation is deterministic
    three.set_epoch(5)
    assert torch.equal(three[0][0], PretextDataset(folder_photos, vocabularies, 3, 64,
                                                   train=False)[0][0])


def test_photo_that_fails_to_decode_is_replaced(folder_photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + os.urandom(300))
    photos = [Photo(str(broken), folder_photos[0].labels), *folder_photos[1:3]]
    vocabularies = build_vocabularies([p.labels for p in photos], min_count=1)
    data = PretextDataset(photos, vocabularies, 2, 64, train=True)
    crops, classes, _, attempt = data[0]
    assert attempt == 1
    assert torch.equal(classes, encode_targets(photos[1].labels, vocabularies)[0])
    assert crops.shape == (2, 3, 64, 64)

    nothing = PretextDataset([Photo(str(broken), ExifLabels())], vocabularies, 2, 64, True)
    with pytest.raises(RuntimeError, match="could be decoded"):
        nothing[0]


def test_dataset_collates_with_a_dataloader(folder_photos):
    vocabularies = build_vocabularies([p.labels for p in folder_photos], min_count=1)
    data = PretextDataset(folder_photos, vocabularies, 2, 64, train=True)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=0)
    patches, classes, ordinal, attempts = next(iter(loader))
    assert patches.shape == (4, 2, 3, 64, 64)
    assert classes.shape == (4, len(CATEGORICAL_TAGS))
    assert ordinal.shape == (4, len(ORDINAL_TAGS))
    assert attempts.tolist() == [0, 0, 0, 0]
    assert np.isfinite(ordinal[:, list(ORDINAL_TAGS).index("iso")].numpy()).all()
