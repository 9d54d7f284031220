"""Scanning: score image files with the one-class detector.

A *detector* is a folder holding an EXIF-trained extractor (``extractor.pt``)
and the density model of its features on real photos (``density.npz``), as
``aigdetect fit-gmm`` writes it. The default one ships in the package.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import CheckpointError, load_model
from .density import DensityError, RealPhotoDensity
from .features import FeatureExtractor, PreparedImage, TileSettings, prepare_stream
from .files import file_sha256

EXTRACTOR_FILE = "extractor.pt"
DENSITY_FILE = "density.npz"
DETECTOR_NAME = "aigdetect-oneclass"
#: Verdict band: within this many real-photo spreads of the threshold, "uncertain".
UNCERTAIN_BAND = 0.5
#: Most tiles an "all tiles" scan uses (attention over the tile set grows with its square).
MAX_TILES = 20_000


def default_model_dir() -> Path:
    """The detector shipped with the package (``weights/`` in the source tree)."""
    packaged = resources.files("aigdetect.weights")
    return Path(str(packaged))


@dataclass
class Detector:
    """Extractor + calibrated density, and the identifiers that go in every record."""

    features: FeatureExtractor
    density: RealPhotoDensity
    tiles: TileSettings
    name: str
    extractor_sha256: str
    density_sha256: str

    @classmethod
    def load(
        cls, model_dir: Path | None, device: torch.device, patches: int | None = None,
        max_pixels: int | None = None, batch_size: int = 256, match_crop: int | None = None,
    ) -> Detector:
        """Load a detector folder; ``patches`` overrides the tile count it was fitted with
        (``None`` keeps it, ``0`` means every tile)."""
        name = model_dir.name if model_dir is not None else "default"
        model_dir = model_dir or default_model_dir()
        extractor_path, density_path = model_dir / EXTRACTOR_FILE, model_dir / DENSITY_FILE
        for path in (extractor_path, density_path):
            if not path.is_file():
                raise DensityError(f"{model_dir} is not a detector folder: {path.name} is missing "
                                   "(make one with 'aigdetect fit-gmm')")
        extractor_sha = file_sha256(extractor_path)
        density = RealPhotoDensity.load(density_path)
        if not isinstance(density.threshold, int | float) or not math.isfinite(density.threshold):
            raise DensityError(f"{density_path}: its threshold is not a finite number; refit "
                               "with 'aigdetect fit-gmm'")
        expected = density.provenance.get("extractor_sha256")
        if expected and expected != extractor_sha:
            raise DensityError(f"{density_path.name} was fitted on another extractor than "
                               f"{extractor_path.name}; refit with 'aigdetect fit-gmm'")
        model, meta = load_model(extractor_path)
        fitted_tiles = density.provenance.get("patches", 16)
        if patches is None:
            patches = fitted_tiles
        tiles = TileSettings(
            patch_size=meta.config.patch_size,
            max_tiles=MAX_TILES if patches == 0 else patches,
            match_crop=match_crop,
            **({"max_pixels": max_pixels} if max_pixels else {}),
        )
        return cls(FeatureExtractor(model.extractor, device, batch_size), density, tiles,
                   name=name,
                   extractor_sha256=extractor_sha, density_sha256=file_sha256(density_path))

    @property
    def identity(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": __version__,
            "extractor_sha256": self.extractor_sha256,
            "density_sha256": self.density_sha256,
        }


@dataclass
class ScanRecord:
    """One line of scan output (the JSON schema documented in the README)."""

    path: str
    sha256: str | None = None
    #: size and modification time when hashed: ``scan --resume`` skips a file only
    #: when both still match (and, with --verify-hash, the sha256 too)
    size: int | None = None
    mtime_ns: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    score: float | None = None
    log_likelihood: float | None = None
    threshold: float | None = None
    verdict: str = "error"
    percentile: float | None = None
    patches: int = 0
    elapsed_ms: float = 0.0
    detector: str = DETECTOR_NAME
    model: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict_for(margin: float, band: float = UNCERTAIN_BAND) -> str:
    """``margin`` = (threshold - log-likelihood) / spread: positive means flagged."""
    if abs(margin) <= band:
        return "uncertain"
    return "ai" if margin > 0 else "real"


def score_prepared(
    prepared: PreparedImage, detector: Detector, threshold: float
) -> ScanRecord:
    """Turn one decoded image into a record (errors included)."""
    started = time.perf_counter()
    record = ScanRecord(
        path=prepared.path, sha256=prepared.sha256, size=prepared.size,
        mtime_ns=prepared.mtime_ns, format=prepared.format,
        width=prepared.width, height=prepared.height, notes=prepared.notes,
        error=prepared.error, model=detector.identity, threshold=round(threshold, 4),
    )
    if prepared.tiles is not None:
        try:
            feature = detector.features(prepared.tiles)
        except RuntimeError as error:  # e.g. out of memory on a huge "all tiles" scan
            record.error = f"network failed: {error}"
        else:
            _score_feature(record, feature, detector.density, threshold)
            record.patches = len(prepared.tiles) if record.error is None else 0
    record.elapsed_ms = round(prepared.decode_ms + (time.perf_counter() - started) * 1000, 1)
    return record


def _score_feature(record: ScanRecord, feature: Any, density: RealPhotoDensity,
                   threshold: float) -> None:
    """Fill the score fields, or an error when any of them is not a finite number.

    NaN or infinity is no evidence (a damaged model or a degenerate feature can give
    one), and it would make the JSON output invalid: such a file is an error record.
    """
    log_likelihood = float(density.score_samples(feature[None])[0])
    margin = float(density.margin(log_likelihood, threshold))
    score = float(density.suspicion(log_likelihood, threshold))
    percentile = float(density.percentile(log_likelihood))
    if not all(math.isfinite(v) for v in (log_likelihood, margin, score, percentile)):
        record.error = "the detector gave a non-finite score (damaged model folder?)"
        return
    record.log_likelihood = round(log_likelihood, 4)
    record.score = round(score, 6)
    record.percentile = round(percentile, 2)
    record.verdict = verdict_for(margin)


def scan(
    paths: Iterable[str | Path],
    detector: Detector,
    workers: int = 2,
    threshold: float | None = None,
) -> Iterator[ScanRecord]:
    """Score files in input order; unreadable files give ``verdict="error"`` records."""
    threshold = detector.density.threshold if threshold is None else threshold
    for prepared in prepare_stream(paths, detector.tiles, workers):
        yield score_prepared(prepared, detector, threshold)


__all__ = ["CheckpointError", "DensityError", "Detector", "ScanRecord", "scan"]
