"""The detectors behind one small interface, and the folder that holds them.

Every detector turns an image's tiles into a *raw* statistic, higher = more
AI-like, and judges it with its :class:`~aigdetect.calibration.Calibration`
(threshold, score, verdict, percentile among held-out real photos):

* ``oneclass``: atypicality of the EXIF-trained extractor's feature under the
  density of real-photo features, i.e. how far its log-likelihood lies from the
  typical real photo's, either way (``extractor.pt`` + ``density.npz``).
* ``binary``: the binary detector's logit, AI minus real (``binary.pt``).
* ``residual``: the log-odds of AI of a linear classifier on hand-crafted residual
  statistics, and optionally a pretrained network's pooled features
  (``residual.npz``, see :mod:`aigdetect.residual_model`).
* ``fused``: the weighted mean of its components' raw statistics (the one-class
  detector and every supervised one the folder holds), each standardised by its
  own real-photo median and spread: it rises with every component, so none can
  be outvoted by a scale.

A detector folder holds the weights, ``calibration.json`` (per detector: the
held-out real scores and the threshold at a stated false-positive rate) and
``detector.json`` (which detectors the folder offers, and the default). A
folder written by ``aigdetect fit-gmm`` alone offers ``oneclass``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import __version__
from .calibration import Calibration
from .checkpoint import BINARY, FACES, PRETEXT, CheckpointError, load_model
from .checkpoint import trained_on as checkpoint_trained_on
from .density import DensityError, RealPhotoDensity
from .faces import ENLARGE
from .features import MAX_TILES, FaceSettings, FeatureExtractor, TileSettings
from .files import atomic_write, file_sha256
from .residual_model import ResidualClassifier, ResidualModelError

EXTRACTOR_FILE = "extractor.pt"
DENSITY_FILE = "density.npz"
BINARY_FILE = "binary.pt"
RESIDUAL_FILE = "residual.npz"
CALIBRATION_FILE = "calibration.json"
MANIFEST_FILE = "detector.json"
MANIFEST_FORMAT = "aigdetect.detector-folder"
DETECTOR_NAMES = ("oneclass", "binary", "residual", "fused")
#: Components the fused detector adds to the one-class one when the folder holds them.
SUPERVISED = {"binary": BINARY_FILE, "residual": RESIDUAL_FILE}
#: The one-class raw statistic that ``calibration.json`` thresholds were set on.
ONECLASS_STATISTIC = "atypicality"
#: The files that make a model, by the key their SHA-256 has in every record's ``model``.
WEIGHT_FILES = {"extractor_sha256": EXTRACTOR_FILE, "density_sha256": DENSITY_FILE,
                "binary_sha256": BINARY_FILE, "residual_sha256": RESIDUAL_FILE,
                "calibration_sha256": CALIBRATION_FILE}
#: Tiles per image when a folder does not say otherwise.
DEFAULT_TILES = 16
#: The face detector's folder inside a detector folder (``scan --faces``).
FACES_DIR = "faces"


class DetectorError(Exception):
    """A detector folder that cannot be used; the message says why."""


def default_model_dir() -> Path:
    """The detector shipped with the package (``weights/`` in the source tree)."""
    return Path(str(resources.files("aigdetect.weights")))


@dataclass
class Judgement:
    """One detector's opinion of one image."""

    raw: float
    score: float
    threshold: float
    verdict: str
    percentile: float
    details: dict[str, float] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Rounded fields for a record's ``components``."""
        return {"score": round(self.score, 6), "raw_score": round(self.raw, 4),
                "threshold": round(self.threshold, 4), "verdict": self.verdict,
                "percentile": round(self.percentile, 2),
                **{k: round(v, 6) for k, v in self.details.items()}}


def judge(calibration: Calibration, raw: float, threshold: float | None,
          details: dict[str, float] | None = None) -> Judgement:
    threshold = calibration.threshold if threshold is None else threshold
    return Judgement(raw, calibration.suspicion(raw, threshold), threshold,
                     calibration.verdict(raw, threshold), calibration.percentile(raw),
                     details or {})


class Detector(Protocol):
    """What ``scan``, ``evaluate`` and ``explain`` need of any detector, a fusion included.

    ``calibrate`` and the heat map work on each single detector (``parts``, or the
    detector itself): its :meth:`SingleDetector.raw` and :meth:`SingleDetector.tile_raw`."""

    name: str
    calibration: Calibration
    #: the detectors a fusion combines; empty for a single detector
    parts: list[SingleDetector]

    def judge(self, tiles: np.ndarray, threshold: float | None = None) -> Judgement:
        """Raw statistic, calibrated score, verdict and components."""


class SingleDetector:
    """A detector with a raw statistic of its own (not a fusion)."""

    name: str
    calibration: Calibration

    @property
    def parts(self) -> list[SingleDetector]:
        return []

    def raw(self, tiles: np.ndarray) -> tuple[float, dict[str, float]]:
        """Raw statistic of an image's tiles (higher = more AI-like) and details."""
        raise NotImplementedError

    def tile_raw(self, tiles: np.ndarray) -> np.ndarray:
        """Each tile's raw statistic, every tile scored alone (for the heat map)."""
        raise NotImplementedError

    def judge(self, tiles: np.ndarray, threshold: float | None = None) -> Judgement:
        raw, details = self.raw(tiles)
        return judge(self.calibration, raw, threshold, details)


@dataclass
class OneClassDetector(SingleDetector):
    """Atypicality of the image's feature under the density of real-photo features:
    how far its log-likelihood lies from real photos' typical one, either way."""

    features: FeatureExtractor
    density: RealPhotoDensity
    calibration: Calibration
    name: str = "oneclass"

    def raw(self, tiles: np.ndarray) -> tuple[float, dict[str, float]]:
        log_likelihood = float(self.density.score_samples(self.features(tiles)[None])[0])
        return float(self.density.atypicality_of(log_likelihood)), {
            "log_likelihood": log_likelihood}

    def tile_raw(self, tiles: np.ndarray) -> np.ndarray:
        """Atypicality of each tile's own feature (a one-tile set)."""
        return self.density.atypicality(self.features.per_tile(tiles))


@dataclass
class BinaryDetector(SingleDetector):
    """The binary detector's logit (AI minus real) on the image's tile set."""

    features: FeatureExtractor
    head: torch.nn.Linear
    calibration: Calibration
    name: str = "binary"

    @torch.inference_mode()
    def raw(self, tiles: np.ndarray) -> tuple[float, dict[str, float]]:
        feature = torch.from_numpy(self.features(tiles)).to(self.head.weight.device)
        logits = self.head(feature).float().cpu()
        return float(logits[1] - logits[0]), {"p_ai": float(logits.softmax(-1)[1])}

    @torch.inference_mode()
    def tile_raw(self, tiles: np.ndarray) -> np.ndarray:
        """The logit (AI minus real) of each tile seen alone, as a one-tile set."""
        features = torch.from_numpy(self.features.per_tile(tiles)).to(self.head.weight.device)
        logits = self.head(features).float().cpu().numpy()
        return logits[:, 1] - logits[:, 0]


@dataclass
class ResidualDetector(SingleDetector):
    """The residual classifier's log-odds of AI on the image's tile set."""

    model: ResidualClassifier
    calibration: Calibration
    name: str = "residual"

    def raw(self, tiles: np.ndarray) -> tuple[float, dict[str, float]]:
        return float(self.model.decision_function(self.model.inputs(tiles)[None])[0]), {}

    def tile_raw(self, tiles: np.ndarray) -> np.ndarray:
        """The log-odds of each tile read alone (its statistics and features)."""
        return self.model.decision_function(self.model.inputs.each_tile(tiles))


@dataclass
class FusedDetector:
    """Weighted mean of the components' standardised raw statistics; keeps each opinion.

    ``weights`` (by component name, summing to 1) come from ``calibrate --fake``;
    without held-out AI images the components weigh the same.
    """

    parts: list[SingleDetector]
    calibration: Calibration
    weights: dict[str, float] | None = None
    name: str = "fused"

    def _opinions(self, tiles: np.ndarray) -> tuple[float, dict[str, Judgement]]:
        opinions = {part.name: part.judge(tiles) for part in self.parts}
        raw = fuse([(part.calibration, opinions[part.name].raw) for part in self.parts],
                   [self.weight(part.name) for part in self.parts])
        return raw, opinions

    def weight(self, name: str) -> float:
        return 1.0 / len(self.parts) if self.weights is None else self.weights[name]

    def judge(self, tiles: np.ndarray, threshold: float | None = None) -> Judgement:
        raw, opinions = self._opinions(tiles)
        judgement = judge(self.calibration, raw, threshold)
        judgement.components = {name: o.summary() for name, o in opinions.items()}
        return judgement


def oneclass_features(detector: Detector) -> FeatureExtractor | None:
    """The one-class component's running extractor (the folder's ``extractor.pt``),
    if the detector has one: what reads the pretext heads can share it."""
    for part in detector.parts or [detector]:
        if isinstance(part, OneClassDetector):
            return part.features
    return None


def fuse(parts: list[tuple[Calibration, float]], weights: Sequence[float] | None = None) -> float:
    """Weighted mean (equal weights by default) of raw statistics, each standardised by
    its calibration: with non-negative weights it never falls as a component rises."""
    standardised = [calibration.standardise(raw) for calibration, raw in parts]
    return float(np.average(standardised, weights=weights))


def missing_oneclass_files(folder: Path) -> list[str]:
    """The one-class detector's files (extractor, density) that ``folder`` lacks."""
    return [name for name in (EXTRACTOR_FILE, DENSITY_FILE) if not (folder / name).is_file()]


@dataclass
class DetectorFolder:
    """A folder of detector weights and calibrations (see the module docstring)."""

    path: Path
    name: str
    manifest: dict[str, Any]
    calibrations: dict[str, Calibration]
    #: the calibration photos' pretext ranking scores and EXIF values (``explain``)
    pretext_reference: dict[str, dict[str, list[float]]] | None = None
    #: the fused detector's component weights (``calibrate --fake``), else equal
    fusion_weights: dict[str, float] | None = None

    @classmethod
    def open(cls, path: Path | None, recalibrating: bool = False) -> DetectorFolder:
        """The detector folder at ``path`` (None: the shipped one), its thresholds
        checked against its weights. ``recalibrating`` (for ``aigdetect calibrate``)
        ignores the stored thresholds: after a refit they are stale, and calibrate is
        what replaces them."""
        name = path.name if path is not None else "default"
        path = path or default_model_dir()
        if not path.is_dir():
            raise DetectorError(f"{path} is not a detector folder (make one with "
                                "'aigdetect fit-gmm', then 'aigdetect calibrate')")
        manifest = {"default": "oneclass", "tiles": None}
        if (path / MANIFEST_FILE).is_file():
            manifest |= _read_manifest(path / MANIFEST_FILE)
        calibrations, reference, fusion = {}, None, None
        if (path / CALIBRATION_FILE).is_file() and not recalibrating:
            stored = _read_json(path / CALIBRATION_FILE, "calibration file")
            try:
                calibrations = {n: Calibration.from_dict(c)
                                for n, c in stored.get("detectors", {}).items()}
                reference = _pretext_reference(stored.get("pretext_reference"))
                calibrated = dict(stored.get("weights", {}))
                fusion = parse_fusion_weights(stored.get("fusion_weights"))
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise DetectorError(f"{path / CALIBRATION_FILE}: damaged ({error})") from None
            _check_calibrated_weights(path, calibrated)
            _check_oneclass_statistic(path, calibrations, stored.get("oneclass_statistic"))
        return cls(path, name, manifest, calibrations, reference, fusion)

    @property
    def available(self) -> list[str]:
        """Detectors this folder can run."""
        names = []
        if not missing_oneclass_files(self.path):
            names.append("oneclass")
        names += self.supervised()
        if "oneclass" in names and len(names) > 1 and "fused" in self.calibrations:
            names.append("fused")
        return names

    def supervised(self, uncalibrated_ok: bool = False) -> list[str]:
        """The supervised detectors the folder holds (calibrated ones, unless
        ``uncalibrated_ok``): the fused detector's components beside the one-class."""
        return [name for name, file in SUPERVISED.items() if (self.path / file).is_file()
                and (uncalibrated_ok or name in self.calibrations)]

    @property
    def default(self) -> str:
        return self.manifest.get("default", "oneclass")

    def weights(self) -> dict[str, str]:
        """SHA-256 of every weight and calibration file present: the model's identity."""
        return {key: file_sha256(self.path / file) for key, file in WEIGHT_FILES.items()
                if (self.path / file).is_file()}

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "version": __version__, **self.weights()}

    def tiles(self, patches: int | None = None, **settings: Any) -> TileSettings:
        """Tile settings; ``patches`` None keeps the folder's count, 0 means every tile
        (up to ``MAX_TILES``, evenly spread)."""
        if patches is None:
            patches = self.manifest.get("tiles") or self._density_tiles()
        return TileSettings(max_tiles=MAX_TILES if patches == 0 else patches, **settings)

    def judges_faces(self) -> bool:
        """Whether its density was fitted on face crops (``fit-gmm --faces``)."""
        return "face_enlarge" in RealPhotoDensity.load(self.path / DENSITY_FILE).provenance

    def face_settings(self, aligned: bool = False) -> FaceSettings:
        """How faces are cut out for this folder: as for the faces its density was
        fitted on (``fit-gmm --faces`` records the enlargement)."""
        provenance = RealPhotoDensity.load(self.path / DENSITY_FILE).provenance
        return FaceSettings(enlarge=float(provenance.get("face_enlarge", ENLARGE)),
                            aligned=aligned)

    def _density_tiles(self) -> int:
        if (self.path / DENSITY_FILE).is_file():
            return RealPhotoDensity.load(self.path / DENSITY_FILE).provenance.get(
                "patches", DEFAULT_TILES)
        return DEFAULT_TILES

    def build(self, name: str | None, device: torch.device, batch_size: int = 256,
              uncalibrated_ok: bool = False) -> Detector:
        """The detector ``name`` (None: the folder's default), ready to score.

        ``uncalibrated_ok`` (for ``aigdetect calibrate``) gives components whose
        calibration is still missing a placeholder one.
        """
        name = name or self.default
        if name not in DETECTOR_NAMES:
            raise DetectorError(f"unknown detector {name!r}; choose one of "
                                f"{', '.join(DETECTOR_NAMES)}")
        if name == "oneclass":  # always calibrated: by fit-gmm, or by calibrate
            return self._oneclass(device, batch_size)
        if name not in self.available and not uncalibrated_ok:
            raise DetectorError(
                f"{self.path} has no calibrated {name} detector (it offers: "
                f"{', '.join(self.available) or 'nothing'}); add one with 'aigdetect calibrate'")
        if name in SUPERVISED:
            return self._supervised(name, device, batch_size, uncalibrated_ok)
        parts = [self._oneclass(device, batch_size)]
        parts += [self._supervised(part, device, batch_size, uncalibrated_ok)
                  for part in self.supervised(uncalibrated_ok)]
        weights = self.fusion_weights
        if weights is not None and set(weights) != {p.name for p in parts}:
            if not uncalibrated_ok:
                raise DetectorError(f"{self.path}: the fusion weights are for "
                                    f"{', '.join(weights)}; run 'aigdetect calibrate' again")
            weights = None
        return FusedDetector(parts, self._calibration("fused", uncalibrated_ok), weights)

    def _calibration(self, name: str, uncalibrated_ok: bool) -> Calibration:
        if name in self.calibrations:
            return self.calibrations[name]
        if uncalibrated_ok:
            return Calibration.fit(np.zeros(1), 0.5)
        raise DetectorError(f"{self.path}: no calibration for the {name} detector")

    def require_oneclass(self) -> None:
        """Every detector folder has the one-class detector: the fused one and the
        calibration photos' pretext reference rest on it."""
        missing = missing_oneclass_files(self.path)
        if missing:
            raise DetectorError(f"{self.path} is not a one-class detector folder: {missing[0]} "
                                "is missing (make one with 'aigdetect fit-gmm')")

    def _oneclass(self, device: torch.device, batch_size: int) -> OneClassDetector:
        extractor_path, density_path = self.path / EXTRACTOR_FILE, self.path / DENSITY_FILE
        self.require_oneclass()
        density = RealPhotoDensity.load(density_path)
        if not math.isfinite(density.threshold):
            raise DetectorError(f"{density_path}: its threshold is not a finite number; refit "
                                "with 'aigdetect fit-gmm'")
        expected = density.provenance.get("extractor_sha256")
        if expected and expected != file_sha256(extractor_path):
            raise DetectorError(f"{density_path.name} was fitted on another extractor than "
                                f"{extractor_path.name}; refit with 'aigdetect fit-gmm'")
        model, meta = load_model(extractor_path)
        if meta.task not in (PRETEXT, FACES):
            raise DetectorError(f"{extractor_path}: a {meta.task} checkpoint, where an EXIF "
                                "(pretext or faces) extractor is needed")
        calibration = self.calibrations.get("oneclass") or density.calibration
        return OneClassDetector(FeatureExtractor(model.extractor, device, batch_size), density,
                                calibration)

    def _binary(self, device: torch.device, batch_size: int,
                uncalibrated_ok: bool) -> BinaryDetector:
        if not (self.path / BINARY_FILE).is_file():
            raise DetectorError(f"{self.path} has no {BINARY_FILE} (train one with "
                                "'aigdetect train --binary', add it with 'aigdetect calibrate')")
        model, _ = load_model(self.path / BINARY_FILE, task=BINARY)
        return BinaryDetector(FeatureExtractor(model.extractor, device, batch_size),
                              model.head.to(device).eval(),
                              self._calibration("binary", uncalibrated_ok))

    def _supervised(self, name: str, device: torch.device, batch_size: int,
                    uncalibrated_ok: bool) -> Detector:
        if name == "binary":
            return self._binary(device, batch_size, uncalibrated_ok)
        return self._residual(uncalibrated_ok)

    def trained_on(self, names: Collection[str] = ("binary", "residual")) -> dict[str, set[str]]:
        """Detector name -> SHA-256 of the files it was fitted on, for those of ``names``
        whose weights record them: images to keep out of calibration and evaluation."""
        readers = {"residual": lambda path: ResidualClassifier.load(path).trained_on(),
                   "binary": checkpoint_trained_on}
        records = {name: readers[name](self.path / SUPERVISED[name]) for name in names
                   if name in SUPERVISED and (self.path / SUPERVISED[name]).is_file()}
        return {name: hashes for name, hashes in records.items() if hashes}

    def _residual(self, uncalibrated_ok: bool) -> ResidualDetector:
        if not (self.path / RESIDUAL_FILE).is_file():
            raise DetectorError(f"{self.path} has no {RESIDUAL_FILE} (fit one with "
                                "'aigdetect fit-residual')")
        model = ResidualClassifier.load(self.path / RESIDUAL_FILE)
        computed = model.inputs.dim(model.provenance.get("config", {}).get("patch_size", 64))
        if model.input_dim != computed:
            raise DetectorError(
                f"{self.path / RESIDUAL_FILE} was fitted on {model.input_dim} residual "
                f"inputs; this aigdetect computes {computed}. Refit it with "
                "'aigdetect fit-residual', then run 'aigdetect calibrate' again")
        return ResidualDetector(model, self._calibration("residual", uncalibrated_ok))

    def save_calibrations(self, calibrations: dict[str, Calibration], default: str,
                          info: dict[str, Any],
                          fusion_weights: dict[str, float] | None = None) -> None:
        """Write ``calibration.json`` (with the hashes of the weights it calibrates)
        and ``detector.json``, atomically."""
        self.calibrations, self.fusion_weights = calibrations, fusion_weights
        weights = {k: v for k, v in self.weights().items() if k != "calibration_sha256"}
        self.manifest = {"format": MANIFEST_FORMAT, "default": default,
                         "tiles": self.manifest.get("tiles") or self._density_tiles()}
        with atomic_write(self.path / CALIBRATION_FILE) as temporary:
            temporary.write_text(json.dumps(
                {"detectors": {n: c.to_dict() for n, c in calibrations.items()},
                 "weights": weights, "oneclass_statistic": ONECLASS_STATISTIC,
                 "fusion_weights": fusion_weights, **info}))
        with atomic_write(self.path / MANIFEST_FILE) as temporary:
            temporary.write_text(json.dumps(self.manifest, indent=2) + "\n")


def _check_calibrated_weights(path: Path, calibrated: dict[str, str]) -> None:
    """Thresholds hold only for the weights they were set on: a density refitted or
    a binary detector replaced since ``calibrate`` makes them stale."""
    for key, expected in calibrated.items():
        if key not in WEIGHT_FILES:
            raise DetectorError(f"{path / CALIBRATION_FILE}: damaged (unknown weights {key!r})")
        file = path / WEIGHT_FILES[key]
        if not file.is_file():
            raise DetectorError(f"{file} is missing: its thresholds were calibrated with it "
                                "(restore it, or refit and calibrate the folder again)")
        if file_sha256(file) != expected:
            raise DetectorError(f"{file} changed since its thresholds were calibrated: run "
                                f"'aigdetect calibrate {path} --real HELD_OUT_PHOTOS' again")


def _check_oneclass_statistic(path: Path, calibrations: dict[str, Calibration],
                              statistic: Any) -> None:
    """Thresholds set on another one-class statistic (the negated log-likelihood of
    aigdetect 0.1) would be silently wrong for today's atypicality."""
    if statistic != ONECLASS_STATISTIC and ({"oneclass", "fused"} & calibrations.keys()):
        raise DetectorError(f"{path / CALIBRATION_FILE} was calibrated for an older one-class "
                            f"score: run 'aigdetect calibrate {path} --real HELD_OUT_PHOTOS' again")


def parse_fusion_weights(data: Any) -> dict[str, float] | None:
    """``{component: weight}`` with non-negative weights summing to 1, or None."""
    if data is None:
        return None
    weights = {str(name): float(weight) for name, weight in data.items()}
    if not set(weights) <= {"oneclass", *SUPERVISED}:
        raise ValueError(f"fusion weights for unknown components {sorted(weights)}")
    if min(weights.values()) < 0 or not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"fusion weights {weights} are not non-negative with sum 1")
    return weights


def _pretext_reference(data: Any) -> dict[str, dict[str, list[float]]] | None:
    """``{"scores": {tag: [...]}, "values": {tag: [...]}}`` with finite numbers, or None."""
    if data is None:
        return None
    checked = {part: {str(tag): [float(v) for v in values]
                      for tag, values in data[part].items()} for part in ("scores", "values")}
    if not all(math.isfinite(v) for part in checked.values() for values in part.values()
               for v in values):
        raise ValueError("pretext reference holds a non-finite number")
    return checked


def _read_manifest(path: Path) -> dict[str, Any]:
    """``detector.json``; a damaged one is refused with the way out (calibrate writes
    it anew from the weights), said before the parser's details, which may be cut."""
    try:
        manifest = _read_json(path, "detector manifest")
        problem = None if manifest.get("format") == MANIFEST_FORMAT else "a foreign format"
    except DetectorError as error:
        problem = str(error).removeprefix(f"{path}: ")
    if problem is None:
        return manifest
    raise DetectorError(f"{path} is damaged: restore it, or delete it and run 'aigdetect "
                        f"calibrate' on its folder to write it anew ({problem})")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise DetectorError(f"{path}: not a readable {what} ({error})") from None
    if not isinstance(data, dict):
        raise DetectorError(f"{path}: not a {what}")
    return data


LOAD_ERRORS = (DetectorError, DensityError, CheckpointError, ResidualModelError)
