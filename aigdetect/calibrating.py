"""``aigdetect calibrate``: set every detector's threshold on held-out real photos.

The photos must be ones no detector of the folder was trained or fitted on,
and should look like the evidence: camera originals *and* processed photos
(resized, recompressed, edited), or processed photos will raise false alarms.
Each detector (one-class, binary, and their fusion) gets its threshold at the
same false-positive rate on the same photos, which makes them comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import Calibration
from .checkpoint import BINARY, PRETEXT, load_model, save_checkpoint
from .detectors import BINARY_FILE, EXTRACTOR_FILE, DetectorError, DetectorFolder, fuse
from .exif import read_labels
from .features import FeatureExtractor, prepare_stream


def add_binary(folder: Path, checkpoint: Path) -> None:
    """Copy a binary detector's weights (no optimiser state) into ``folder``."""
    model, meta = load_model(checkpoint, task=BINARY)
    target = folder / BINARY_FILE
    if not target.exists() or target.resolve() != checkpoint.resolve():
        save_checkpoint(target, model, meta)


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
) -> dict[str, Any]:
    """Score ``real_paths`` with every detector of the folder, write the thresholds at
    ``fpr`` (``calibration.json``) and the default detector (``detector.json``).
    Returns what was written, for a summary."""
    if binary is not None:
        add_binary(folder_path, binary)
    folder = DetectorFolder.open(folder_path)
    has_binary = (folder.path / BINARY_FILE).is_file()
    parts = [folder.build("oneclass", device, batch_size)]
    if has_binary:
        parts.append(folder.build("binary", device, batch_size, uncalibrated_ok=True))
    raw: dict[str, list[float]] = {part.name: [] for part in parts}
    reference = PretextReference(folder.path / EXTRACTOR_FILE, device, batch_size)
    unreadable = 0
    for prepared in prepare_stream(real_paths, folder.tiles(), workers):
        if prepared.tiles is None:
            unreadable += 1
        else:
            for part in parts:
                raw[part.name].append(part.raw(prepared.tiles)[0])
            reference.add(prepared.tiles, prepared.path)
        if on_image is not None:
            on_image(1)
    count = len(raw["oneclass"])
    if count < 20:
        raise DetectorError(f"only {count} readable real photos: a threshold at a stated "
                            "false-positive rate needs hundreds")
    calibrations = {name: Calibration.fit(np.array(values), fpr) for name, values in raw.items()}
    if has_binary:
        fused = [fuse([(calibrations[name], raw[name][i]) for name in raw]) for i in range(count)]
        calibrations["fused"] = Calibration.fit(np.array(fused), fpr)
    default = default or ("fused" if has_binary else "oneclass")
    if default not in calibrations:
        raise DetectorError(f"--default {default}: this folder offers {', '.join(calibrations)}")
    info = {"fpr": fpr, "real_photos": count, "unreadable": unreadable,
            "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pretext_reference": reference.summary()}
    folder.save_calibrations(calibrations, default, info)
    return {"default": default, "thresholds": {n: c.threshold for n, c in calibrations.items()},
            **info}


class PretextReference:
    """The EXIF-pretext ranking scores of the calibration photos, and the values
    their own EXIF gives, per ordinal tag (ISO, aperture...): ``explain`` places an
    image's scores and its claimed values among them, on the same photos."""

    def __init__(self, extractor: Path, device: torch.device, batch_size: int) -> None:
        self.model, _ = load_model(extractor, task=PRETEXT)
        self.features = FeatureExtractor(self.model.extractor, device, batch_size)
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
