"""Building a one-class detector: features of real photos -> fitted, calibrated density.

``aigdetect fit-gmm`` runs :func:`fit_detector`. Part of the real photos is
held out (whole cameras, where EXIF names them) to calibrate the threshold, so
the promised false-positive rate is measured on photos the density never saw.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import FACES, PRETEXT, CheckpointError, load_model, save_checkpoint
from .dataset import Photo, split_by_camera
from .density import DensityError, RealPhotoDensity
from .detectors import DENSITY_FILE, EXTRACTOR_FILE
from .exif import read_labels
from .features import FaceSettings, FeatureExtractor, TileSettings, prepare_stream
from .files import atomic_write, file_sha256
from .runtime import pick_device

Progress = Callable[[int], None]


@dataclass
class FolderFeatures:
    """Features of the readable files of a folder, and what could not be read. In
    face mode a row is a face, and ``paths`` names its photo once per face."""

    paths: list[str]
    features: np.ndarray
    errors: dict[str, str]


def _cache_key(paths: Sequence[Path], extractor_sha: str, tiles: TileSettings) -> str:
    """Paths as given (they are stored in the cache), their real targets, sizes and
    times, the extractor and the tile settings: any change is a cache miss."""
    digest = hashlib.sha256(json.dumps([extractor_sha, repr(tiles)]).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _read_cache(cache_file: Path) -> FolderFeatures | None:
    """A cached result, or None when absent or damaged (then it is recomputed)."""
    try:
        with np.load(cache_file, allow_pickle=False) as data:
            errors = json.loads(str(data["errors"]))
            return FolderFeatures(list(data["paths"]), data["features"], errors)
    except Exception:
        return None


def _write_cache(cache_file: Path, result: FolderFeatures) -> None:
    """Write then rename, so an interrupted run never leaves a truncated cache."""
    with atomic_write(cache_file) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, paths=np.array(result.paths, dtype=str), features=result.features,
                 errors=np.array(json.dumps(result.errors)))


def extract_features(
    paths: Sequence[Path],
    extractor: FeatureExtractor,
    extractor_sha: str,
    tiles: TileSettings,
    workers: int,
    cache_dir: Path | None = None,
    on_image: Progress | None = None,
) -> FolderFeatures:
    """Features of ``paths``; reuses a cache (plain ``.npz``, no pickle) keyed by the
    files' paths, sizes and times, the extractor's hash and the tile settings."""
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"features-{_cache_key(paths, extractor_sha, tiles)}.npz"
        cached = _read_cache(cache_file) if cache_file.exists() else None
        if cached is not None:
            return cached
    kept, features, errors = [], [], {}
    for prepared in prepare_stream(paths, tiles, workers):
        if prepared.tiles is None:
            errors[prepared.path] = prepared.error or "unreadable"
        elif prepared.faces is not None:  # face mode: one row per face, none without
            for face in prepared.faces:
                kept.append(prepared.path)
                features.append(extractor(face.tiles))
        else:
            kept.append(prepared.path)
            features.append(extractor(prepared.tiles))
        if on_image is not None:
            on_image(1)
    stacked = np.stack(features) if features else np.zeros((0, 0), dtype=np.float32)
    result = FolderFeatures(kept, stacked, errors)
    if cache_file is not None:
        _write_cache(cache_file, result)
    return result


def fit_detector(
    real_paths: Sequence[Path],
    extractor_path: Path,
    output_dir: Path,
    *,
    patches: int = 16,
    components: int | str = "auto",
    covariance_type: str = "full",
    pca_dim: int = 32,
    reg_covar: float = 1e-3,
    fpr: float = 0.02,
    calibration_fraction: float = 0.25,
    seed: int = 0,
    device: str = "auto",
    workers: int = 2,
    cache_dir: Path | None = None,
    on_image: Progress | None = None,
    faces: FaceSettings | None = None,
) -> tuple[RealPhotoDensity, FolderFeatures]:
    """Fit and calibrate a density of real-photo features; write a detector folder
    (``extractor.pt`` + ``density.npz``) that ``aigdetect scan --model`` loads.

    With ``faces``, the features are those of every face found in the photos (a face
    folder for ``scan --faces``); the held-out split is still by camera and photo.
    """
    model, meta = load_model(extractor_path)
    if meta.task not in (PRETEXT, FACES):  # a binary detector's extractor is no camera model
        raise CheckpointError(f"{extractor_path}: a {meta.task} checkpoint, where an EXIF "
                              "(pretext or faces) extractor is needed")
    tiles = TileSettings(patch_size=meta.config.patch_size, max_tiles=patches, faces=faces)
    extractor = FeatureExtractor(model.extractor, pick_device(device))
    folder = extract_features(real_paths, extractor, file_sha256(extractor_path), tiles,
                              workers, cache_dir, on_image)
    unit = "faces" if faces else "readable photos"
    if len(folder.paths) < 4:
        raise DensityError(f"only {len(folder.paths)} {unit}: a density needs more "
                           "(hundreds for a trustworthy threshold)")
    rows: dict[str, list[int]] = {}
    for row, path in enumerate(folder.paths):
        rows.setdefault(path, []).append(row)
    photos = [Photo(path, read_labels(path)) for path in rows]
    fit_photos, calibration_photos = split_by_camera(photos, calibration_fraction, seed)
    fit_rows = [row for p in fit_photos for row in rows[p.path]]
    if len(fit_rows) < 2:
        raise DensityError(f"--calibration-fraction {calibration_fraction} holds out "
                           f"{len(calibration_photos)} of {len(photos)} photos (whole "
                           f"cameras), leaving {len(fit_rows)} {unit} to fit the density: "
                           "lower it, or add photos of more cameras")
    calibration_rows = [row for p in calibration_photos for row in rows[p.path]]

    density = RealPhotoDensity(components=components, covariance_type=covariance_type,
                               pca_dim=pca_dim, reg_covar=reg_covar, seed=seed)
    density.fit(folder.features[fit_rows])
    density.calibrate(folder.features[calibration_rows], fpr)

    output_dir.mkdir(parents=True, exist_ok=True)
    shipped_extractor = output_dir / EXTRACTOR_FILE
    if not (shipped_extractor.exists() and shipped_extractor.samefile(extractor_path)):
        save_checkpoint(shipped_extractor, model, meta)  # weights only, no optimiser state
    density.provenance = {
        "extractor_sha256": file_sha256(shipped_extractor),
        "patches": patches,
        "patch_size": meta.config.patch_size,
        "fit_photos": len(fit_photos),
        "calibration_photos": len(calibration_photos),
        "unreadable": len(folder.errors),
        **({"face_enlarge": faces.enlarge, "aligned": faces.aligned, "fit_faces": len(fit_rows),
            "calibration_faces": len(calibration_rows)} if faces else {}),
    }
    density.save(output_dir / DENSITY_FILE)
    return density, folder
