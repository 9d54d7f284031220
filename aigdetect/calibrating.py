"""``aigdetect calibrate``: set every detector's threshold on held-out real photos.

The photos must be ones no detector of the folder was trained or fitted on,
and should look like the evidence: camera originals *and* processed photos
(resized, recompressed, edited), or processed photos will raise false alarms.
Each detector (one-class, binary, residual, and their fusion) gets its
threshold at the same false-positive rate on the same photos, which makes them
comparable. The photos are scored as they are and, by default, after the
processings evidence commonly goes through (a centre crop recompressed, a resize
for the web: ``patches.CONDITIONS``), and the threshold holds under each.

With held-out AI images too (``--fake``: generators the detectors were not
trained on, or held-out images of those they were), the fused detector's
components are weighted by how well each separates them from the real photos,
so a component that carries no signal there cannot dilute one that does, and
the default detector is the one that ranks them best (the fusion judged with
weights learned on other images than those it is scored on).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from .calibration import Calibration
from .checkpoint import BINARY, PRETEXT, load_model, save_checkpoint, trained_on
from .detectors import (
    BINARY_FILE,
    EXTRACTOR_FILE,
    Detector,
    DetectorError,
    DetectorFolder,
    fuse,
)
from .exif import read_labels
from .features import FeatureExtractor, TileSettings, prepare_stream
from .files import atomic_write, file_sha256_or_none
from .patches import CONDITIONS


def add_binary(folder: Path, checkpoint: Path) -> None:
    """Copy a binary detector's weights (no optimiser state) into ``folder``."""
    model, meta = load_model(checkpoint, task=BINARY)
    target = folder / BINARY_FILE
    if not target.exists() or target.resolve() != checkpoint.resolve():
        save_checkpoint(target, model, meta)


#: Fewest real photos a threshold is set on, and fewest AI images that weight the fusion.
MIN_REAL, MIN_FAKE = 20, 10


def require_real(count: int, readable: str = "") -> None:
    """A threshold at a stated false-positive rate needs hundreds of real photos; this
    minimum only stops the absurd."""
    if count < MIN_REAL:
        raise DetectorError(f"only {count} {readable}real photos: calibration needs at least "
                            f"{MIN_REAL}, and a threshold at a stated false-positive rate "
                            "hundreds")


def require_fake(count: int, readable: str = "") -> None:
    """Fusion weights need dozens of AI images (call it only when --fake was given:
    without it the components weigh the same)."""
    if count < MIN_FAKE:
        raise DetectorError(f"only {count} {readable}--fake images: weighting the fusion needs "
                            f"at least {MIN_FAKE} (dozens are better); leave --fake out for "
                            "equal weights")


def calibrate_folder(
    folder_path: Path,
    real_paths: Sequence[Path],
    fpr: float,
    device: torch.device,
    *,
    binary: Path | None = None,
    default: str | None = None,
    workers: int = 2,
    batch_size: int = 256,
    on_image: Callable[[int], None] | None = None,
    fake_paths: Sequence[Path] = (),
    real_groups: Sequence[str] | None = None,
    processings: Sequence[str] = ("asis",),
) -> dict[str, Any]:
    """Score ``real_paths`` with every detector of the folder, write the thresholds at
    ``fpr`` (``calibration.json``) and the default detector (``detector.json``).

    ``real_groups`` names each real photo's kind (its ``--real`` folder) and
    ``processings`` (names of ``patches.CONDITIONS``) say under which processings the
    photos are scored: every threshold then holds on each kind under each processing.
    ``fake_paths`` (held-out AI images, scored under the same processings) set the
    fused detector's weights. Returns what was written, for a summary."""
    folder = DetectorFolder.open(folder_path, recalibrating=True)
    folder.require_oneclass()  # before anything is written into it
    refuse_face_folder(folder)
    require_real(len(real_paths))  # before minutes of scoring
    trained = folder.trained_on() | ({"binary": trained_on(binary)} if binary else {})
    refuse_trained_on(trained, [*real_paths, *fake_paths])
    if fake_paths:
        require_fake(len(fake_paths))
    # a failed run leaves the folder as it was, the binary weights it brought included
    with kept_unless_done(folder_path / BINARY_FILE) if binary is not None else nullcontext():
        if binary is not None:
            add_binary(folder_path, binary)
        return _calibrate(folder, real_paths, fpr, device, default, workers, batch_size,
                          on_image, fake_paths, real_groups, processings)


def refuse_face_folder(folder: DetectorFolder) -> None:
    """A face detector folder judges face crops, which ``calibrate`` does not cut:
    its threshold is set by ``fit-gmm --faces --fpr`` on real faces instead."""
    if folder.judges_faces():
        raise DetectorError(f"{folder.path} is a face detector folder: calibrate sets the "
                            "thresholds of general detector folders. Set a face folder's "
                            "threshold with 'aigdetect fit-gmm PHOTOS --faces --extractor "
                            "FACES.pt -o FOLDER --fpr RATE' on real faces")


def refuse_trained_on(trained: dict[str, set[str]], paths: Sequence[Path]) -> None:
    """Refuse calibration images that a detector was fitted on (``trained``: detector
    name -> SHA-256 of its training files).

    It scores its own training images as it learned them: a threshold set on them
    promises fewer false alarms than new photos get, and fusion weights learned on
    them favour it. Only weights that record their training files can be checked.
    """
    if not any(trained.values()):
        return
    hashes = dict(zip(paths, map(file_sha256_or_none, paths), strict=True))
    for name, fitted_on in trained.items():
        seen = [path for path, digest in hashes.items() if digest in fitted_on]
        if seen:
            raise DetectorError(
                f"{len(seen)} of the calibration images were fitted on by the {name} "
                f"detector, e.g. {seen[0]}: thresholds set on them would promise fewer false "
                "alarms than new photos get; calibrate on images no detector of the folder "
                "was trained on")


@contextmanager
def kept_unless_done(path: Path) -> Iterator[None]:
    """Put ``path`` back as it was (or remove it, if it was not there) when the block
    fails: calibrating a folder must not leave it half changed."""
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            with atomic_write(path) as temporary:
                temporary.write_bytes(before)
        raise


def _calibrate(folder: DetectorFolder, real_paths: Sequence[Path], fpr: float,
               device: torch.device, default: str | None, workers: int, batch_size: int,
               on_image: Callable[[int], None] | None, fake_paths: Sequence[Path],
               real_groups: Sequence[str] | None, processings: Sequence[str]
               ) -> dict[str, Any]:
    supervised = folder.supervised(uncalibrated_ok=True)
    offered = ["oneclass", *supervised, *(["fused"] if supervised else [])]
    if default is not None and default not in offered:  # said before minutes of scoring
        raise DetectorError(f"--default {default}: this folder offers {', '.join(offered)}")
    if fake_paths and not supervised:
        raise DetectorError("--fake weights the fused detector's components: the folder needs "
                            "a supervised detector too (--binary, or 'aigdetect fit-residual')")
    parts = [folder.build(name, device, batch_size, uncalibrated_ok=True)
             for name in ("oneclass", *supervised)]
    reference = PretextReference(folder.path / EXTRACTOR_FILE, parts[0].features)
    real = score_processed(parts, real_paths, folder, processings, workers, on_image,
                           reference, real_groups)
    count, unreadable = len(real.readable), len(real_paths) - len(real.readable)
    require_real(count, "readable ")
    calibrations = {name: real.calibration(values, fpr) for name, values in real.raw.items()}
    weights, validation = None, None
    if supervised and fake_paths:
        fake = score_processed(parts, fake_paths, folder, processings, workers, on_image)
        require_fake(len(fake.readable), "readable ")
        images = ([f"real:{i}" for i in real.file_of_score]
                  + [f"ai:{i}" for i in fake.file_of_score])
        weights, aucs = learn_fusion_weights(calibrations, real.raw, fake.raw, images)
        validation = {"ai_images": len(fake.readable), "real_photos": count, **aucs}
    if supervised:
        order = list(real.raw)
        fused = [fuse([(calibrations[name], real.raw[name][i]) for name in order],
                      None if weights is None else [weights[name] for name in order])
                 for i in range(len(real.groups))]
        calibrations["fused"] = real.calibration(fused, fpr)
    default = default or best_detector(validation, list(calibrations))
    kinds = Counter(real_groups[i] for i in real.readable) if real_groups is not None else None
    group_sizes = ({str(kind): kinds[kind] for kind in sorted(kinds)}
                   if kinds is not None else {"all": count})
    info = {"fpr": fpr, "processings": list(processings), "real_photos": count,
            "unreadable": unreadable,
            "group_sizes": group_sizes,
            "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fusion_validation": validation, "pretext_reference": reference.summary()}
    folder.save_calibrations(calibrations, default, info, weights)
    return {"default": default, "thresholds": {n: c.threshold for n, c in calibrations.items()},
            "fusion_weights": weights, **info}


@dataclass
class ScoredFiles:
    """Every component's raw scores of a set of files, each readable file scored once
    per processing, pooled."""

    #: component name -> one raw score per (file, processing)
    raw: dict[str, list[float]]
    #: the group of each score: "kind, processing" (a part left out when there is one)
    groups: list[str]
    #: which of the files were readable as they are (their indices)
    readable: list[int]
    #: the file (index) each score is of
    file_of_score: list[int]

    def calibration(self, scores: Sequence[float], fpr: float) -> Calibration:
        """A threshold at ``fpr`` that holds on each group of these scores."""
        scores, groups = np.asarray(scores), np.array(self.groups)
        by_group = ({group: scores[groups == group] for group in sorted(set(self.groups))}
                    if any(self.groups) else None)
        return Calibration.fit(scores, fpr, by_group)


def score_processed(parts: Sequence[Detector], paths: Sequence[Path], folder: DetectorFolder,
                    processings: Sequence[str], workers: int,
                    on_image: Callable[[int], None] | None = None,
                    reference: PretextReference | None = None,
                    kinds: Sequence[str] | None = None) -> ScoredFiles:
    """``paths`` scored by every component under each processing; ``kinds`` names each
    file's kind of real photo (its --real folder).

    Evidence rarely arrives as the camera wrote it: a threshold set on originals
    alone flags more of the same photos once they are cropped and recompressed."""
    raw: dict[str, list[float]] = {part.name: [] for part in parts}
    groups: list[str] = []
    first_readable: list[int] = []
    file_of_score: list[int] = []
    for step, name in enumerate(processings):
        settings = folder.tiles(processing=None if name == "asis" else CONDITIONS[name])
        scores, readable = score_parts(parts, paths, settings, workers, on_image,
                                       reference if step == 0 else None)
        for part_name, values in scores.items():
            raw[part_name] += values
        processing = name if len(processings) > 1 else ""
        groups += [", ".join(filter(None, (kinds[i] if kinds else "", processing)))
                   for i in readable]
        file_of_score += readable
        if step == 0:
            first_readable = readable
    return ScoredFiles(raw, groups, first_readable, file_of_score)


def score_parts(parts: Sequence[Detector], paths: Sequence[Path], settings: TileSettings,
                workers: int, on_image: Callable[[int], None] | None = None,
                reference: PretextReference | None = None
                ) -> tuple[dict[str, list[float]], list[int]]:
    """Each component's raw score of every readable file, and which of ``paths``
    those are (their indices)."""
    raw: dict[str, list[float]] = {part.name: [] for part in parts}
    readable = []
    for index, prepared in enumerate(prepare_stream(paths, settings, workers)):
        if prepared.tiles is not None:
            readable.append(index)
            for part in parts:
                raw[part.name].append(part.raw(prepared.tiles)[0])
            if reference is not None:
                reference.add(prepared.tiles, prepared.path)
        if on_image is not None:
            on_image(1)
    return raw, readable


def learn_fusion_weights(calibrations: dict[str, Calibration], real: dict[str, list[float]],
                         fake: dict[str, list[float]], images: Sequence[str] | None = None
                         ) -> tuple[dict[str, float], dict[str, Any]]:
    """The fused detector's component weights, and the validation AUCs they give.

    A logistic regression (AI = 1) on the standardised raw scores of held-out real and
    AI images; a negative coefficient becomes 0 (a component that ranks these AI images
    below real photos is switched off, not inverted, which nothing else would justify);
    the rest are scaled to sum to 1. Equal weights if no coefficient is positive.

    The validation AUCs are each component's and the fusion's on these images. The
    fusion's weights were learned on them, so its AUC there flatters it; the
    ``fused_cross_validated`` AUC (weights learned on the other folds) is the fair
    one to compare with a component's. ``images`` names the image of each score (real
    scores first): one image's scores under several processings then stay in one fold.
    """
    names = list(real)
    count = len(fake[names[0]])
    if count < MIN_FAKE:  # cross-validation needs a few per fold
        raise DetectorError(f"only {count} AI scores: weighting the fusion needs dozens")
    standardised = {name: [calibrations[name].standardise(v) for v in [*real[name], *fake[name]]]
                    for name in names}
    features = np.array([standardised[name] for name in names]).T
    labels = np.array([0] * len(real[names[0]]) + [1] * count)
    learned = learned_weights(features, labels)
    weights = {name: float(w) for name, w in zip(names, learned, strict=True)}
    aucs = {name: float(roc_auc_score(labels, features[:, i])) for i, name in enumerate(names)}
    return weights, {"auc": {**aucs, "fused": float(roc_auc_score(labels, features @ learned)),
                             "fused_cross_validated": cross_validated_auc(features, labels,
                                                                          images)}}


def learned_weights(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 from a logistic regression of ``labels`` on the
    standardised component scores (see :func:`fusion_weights`).

    A component with a negative coefficient is dropped and the rest are fitted again
    without it: the others' coefficients were learned alongside it (correlated scores
    share the credit), so clipping it to 0 alone would leave them mis-weighed."""
    kept = np.arange(features.shape[1])
    while kept.size:
        coefficients = LogisticRegression().fit(features[:, kept], labels).coef_[0]
        if (coefficients >= 0).all():
            break
        kept = kept[coefficients > 0]
    weights = np.zeros(features.shape[1])
    if kept.size and coefficients.sum() > 0:
        weights[kept] = coefficients
    else:
        weights[:] = 1.0
    return weights / weights.sum()


def cross_validated_auc(features: np.ndarray, labels: np.ndarray,
                        images: Sequence[str] | None = None, folds: int = 5) -> float:
    """AUC of the fusion when every image is scored with weights learned without it,
    under any processing: an image's scores (``images``: one name per row) share a
    fold, or its as-is copy would teach the weights that score its cropped copy."""
    images = np.arange(len(labels)) if images is None else np.asarray(images)
    count = min(folds, len(set(images[labels == 1])), len(set(images[labels == 0])))
    splitter = StratifiedGroupKFold(count, shuffle=True, random_state=0)
    scores = np.zeros(len(labels))
    for train, test in splitter.split(features, labels, images):
        scores[test] = features[test] @ learned_weights(features[train], labels[train])
    return float(roc_auc_score(labels, scores))


def best_detector(validation: dict[str, Any] | None, offered: Sequence[str]) -> str:
    """The default detector: with held-out AI images, the one that ranks them best (the
    fusion by its cross-validated AUC, and preferred on a tie); without, the fusion
    when the folder has one, else the one-class detector."""
    if validation is None:
        return "fused" if "fused" in offered else "oneclass"
    aucs = {name: auc for name, auc in validation["auc"].items()
            if name in offered and name != "fused"}
    aucs["fused"] = validation["auc"]["fused_cross_validated"]
    return max(aucs, key=lambda name: (aucs[name], name == "fused"))


class PretextReference:
    """The EXIF-pretext ranking scores of the calibration photos, and the values
    their own EXIF gives, per ordinal tag (ISO, aperture...): ``explain`` places an
    image's scores and its claimed values among them, on the same photos.

    ``features`` runs the same weights as ``extractor`` (the one-class detector's):
    it keeps its last result, so each photo's feature is computed once for both."""

    def __init__(self, extractor: Path, features: FeatureExtractor) -> None:
        self.model, _ = load_model(extractor, task=PRETEXT)
        self.features = features
        self.scores: dict[str, list[float]] = {t: [] for t in self.model.heads.ranking}
        self.values: dict[str, list[float]] = {t: [] for t in self.model.heads.ranking}

    @torch.inference_mode()
    def add(self, tiles: np.ndarray, path: str) -> None:
        _, scores = self.model.heads(torch.from_numpy(self.features(tiles))[None])
        labels = read_labels(path)
        for tag, score in scores.items():
            self.scores[tag].append(float(score[0]))
            if getattr(labels, tag) is not None:
                self.values[tag].append(float(getattr(labels, tag)))

    def summary(self) -> dict[str, dict[str, list[float]]]:
        return {"scores": {t: sorted(v) for t, v in self.scores.items()},
                "values": {t: sorted(v) for t, v in self.values.items()}}
