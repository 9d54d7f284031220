"""The residual detector: a linear classifier on hand-crafted residual statistics.

Why a second supervised detector beside the binary network: on hundreds of
training images a network learns the training generators; a regularised linear
model on a few hundred fixed statistics (:mod:`aigdetect.residuals`) has far
less to overfit, fits in seconds on a CPU (so leave-one-generator-out
retraining is cheap), and errs differently from the networks, which is what a
fusion needs.

Training follows the binary detector's rules (:mod:`aigdetect.binary_data`):
both classes augmented alike, each group weighted by the square root of its
size, the same validation split. Weights are plain arrays in one ``.npz``
(no pickle): ``fit`` / ``decision_function`` / ``save`` / ``load``, as in
scikit-learn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from . import __version__
from .binary_data import Augmentation, split_for_validation
from .files import atomic_write
from .labelled import AI, REAL, LabelledFile
from .patches import CONDITIONS, ImageReadError, apply_processing, grid_tiles, load_image
from .residuals import residual_statistics

#: scikit-learn's ``C``: chosen by ``benchmarks/residual_selection.py`` (0.03 beat 0.1
#: by 0.003-0.006 mean AUC with two augmentation draws and two statistic sets)
DEFAULT_REGULARISATION = 0.03
FORMAT = "aigdetect.residual-detector"
FORMAT_VERSION = 1


class ResidualModelError(Exception):
    """A residual detector file that cannot be used, or data it cannot be fitted on."""


@dataclass
class ResidualClassifier:
    """Standardised residual statistics -> logistic regression; higher = more AI-like.

    ``regularisation`` is scikit-learn's ``C`` (smaller = simpler model).
    """

    regularisation: float = DEFAULT_REGULARISATION
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    coef_: np.ndarray | None = None
    intercept_: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)

    def fit(self, features: np.ndarray, labels: np.ndarray,
            sample_weight: np.ndarray | None = None) -> ResidualClassifier:
        self.mean_ = features.mean(axis=0)
        self.scale_ = features.std(axis=0)
        self.scale_[self.scale_ < 1e-12] = 1.0  # a constant statistic carries nothing
        model = LogisticRegression(C=self.regularisation, max_iter=5000)
        model.fit(self._standardise(features), labels, sample_weight=sample_weight)
        self.coef_, self.intercept_ = model.coef_[0], float(model.intercept_[0])
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """The log-odds of AI for each row of ``features``."""
        if self.coef_ is None:
            raise ResidualModelError("the residual classifier is not fitted")
        return self._standardise(features) @ self.coef_ + self.intercept_

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.nan_to_num(features) - self.mean_) / self.scale_

    def save(self, path: str | Path) -> None:
        """Plain arrays + a JSON header in one ``.npz``, written atomically."""
        if self.coef_ is None:
            raise ResidualModelError("the residual classifier is not fitted")
        header = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "regularisation": self.regularisation,
                  "intercept": self.intercept_, "provenance": self.provenance}
        with atomic_write(Path(path)) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, header=np.array(json.dumps(header)), mean=self.mean_,
                     scale=self.scale_, coef=self.coef_)

    @classmethod
    def load(cls, path: str | Path) -> ResidualClassifier:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {key: data[key] for key in ("mean", "scale", "coef")}
        except FileNotFoundError:
            raise ResidualModelError(f"{path}: no such file") from None
        except Exception as error:
            raise ResidualModelError(f"{path}: not a residual detector file ({error})") from None
        if header.get("format") != FORMAT:
            raise ResidualModelError(f"{path}: not an aigdetect residual detector file")
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise ResidualModelError(f"{path}: written by a newer aigdetect; upgrade to read it")
        return cls(regularisation=header["regularisation"], mean_=arrays["mean"],
                   scale_=arrays["scale"], coef_=arrays["coef"],
                   intercept_=float(header["intercept"]), provenance=header["provenance"])


@dataclass(frozen=True)
class ResidualFitConfig:
    """How the residual detector is fitted (recorded in its provenance)."""

    regularisation: float = DEFAULT_REGULARISATION
    #: augmented copies of each training image (each a fresh draw of processing)
    variants: int = 2
    tiles: int = 16
    patch_size: int = 64
    val_fraction: float = 0.15
    seed: int = 0
    workers: int = 2


def fit_residual(files: Sequence[LabelledFile], config: ResidualFitConfig,
                 on_image: Callable[[int], None] | None = None) -> ResidualClassifier:
    """Fit on ``files`` minus the validation share (the binary detector's split, so
    images it holds out stay unseen by both), validated on that share."""
    train, held_out = split_for_validation(files, config.val_fraction, config.seed)
    for label in (REAL, AI):
        if not any(f.label == label for f in train):
            raise ResidualModelError(f"no {'real' if label == REAL else 'AI'} training images")
    features, labels, groups, unreadable = training_features(train, config, on_image)
    skipped = len(unreadable)
    model = ResidualClassifier(config.regularisation)
    model.fit(features, labels, group_weights(labels, groups))
    model.provenance = {
        "aigdetect_version": __version__, "config": vars(config).copy(),
        "train_images": len(train) - skipped, "unreadable": skipped,
        "unreadable_files": dict(list(unreadable.items())[:20]),
        "groups": {g: int(np.sum(groups == g)) // config.variants for g in sorted(set(groups))},
        "validation": validate(model, held_out, config, on_image)}
    return model


def training_features(files: Sequence[LabelledFile], config: ResidualFitConfig,
                      on_image: Callable[[int], None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    """Statistics of ``config.variants`` augmented copies of every readable file:
    (features, labels, groups, {unreadable path: why})."""
    jobs = [(file.path, index, config) for index, file in enumerate(files)]
    rows, labels, groups, unreadable = [], [], [], {}
    for file, result in zip(files, _map(_augmented_statistics, jobs, config.workers, on_image),
                            strict=True):
        if isinstance(result, str):
            unreadable[file.path] = result
            continue
        rows.append(result)
        labels += [file.label] * len(result)
        groups += [file.group] * len(result)
    if not rows:
        raise ResidualModelError("no training image could be read")
    return np.concatenate(rows), np.array(labels), np.array(groups), unreadable


def group_weights(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sample weights: each group weighs the square root of its size (one big family
    does not define "AI", a handful of images is not repeated to death), and the two
    classes weigh the same in all."""
    weights = np.zeros(len(labels))
    for group in set(groups):
        members = groups == group
        weights[members] = 1.0 / np.sqrt(members.sum())
    for label in (REAL, AI):
        weights[labels == label] /= weights[labels == label].sum()
    return weights * len(weights) / 2


def validate(model: ResidualClassifier, files: Sequence[LabelledFile],
             config: ResidualFitConfig,
             on_image: Callable[[int], None] | None = None) -> dict[str, Any]:
    """AUC (AI positive) on held-out files under the benchmark's matched processing."""
    jobs = [(file.path, config) for file in files]
    scores, labels = [], []
    for file, result in zip(files, _map(_matched_statistics, jobs, config.workers, on_image),
                            strict=True):
        if not isinstance(result, str):
            scores.append(float(model.decision_function(result[None])[0]))
            labels.append(file.label)
    auc = roc_auc_score(labels, scores) if len(set(labels)) == 2 else None
    return {"images": len(labels), "ai": int(sum(labels)), "auc_matched": auc}


def _map(function, jobs: list, workers: int, on_image: Callable[[int], None] | None):
    """``function`` over ``jobs``, in order, in ``workers`` processes (0: in this one)."""
    if workers == 0:
        yield from _counted(map(function, jobs), on_image)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from _counted(pool.map(function, jobs, chunksize=4), on_image)


def _counted(results, on_image: Callable[[int], None] | None):
    for result in results:
        if on_image is not None:
            on_image(1)
        yield result


def _read(path: str) -> np.ndarray | str:
    """The file's pixels, or why it cannot be read (a bad file must not end a fit)."""
    try:
        return load_image(path).pixels
    except ImageReadError as error:
        return str(error)
    except Exception as error:  # a bug in a decoder must not end a fit either
        return f"unexpected {type(error).__name__}: {error}"


def _augmented_statistics(job: tuple[str, int, ResidualFitConfig]) -> np.ndarray | str:
    path, index, config = job
    pixels = _read(path)
    if isinstance(pixels, str):
        return pixels
    augmentation = Augmentation()
    rows = []
    for variant in range(config.variants):
        rng = np.random.default_rng([config.seed, index, variant])
        augmented = augmentation(pixels, rng, config.patch_size)
        rows.append(residual_statistics(grid_tiles(augmented, config.patch_size, config.tiles)))
    return np.stack(rows)


def _matched_statistics(job: tuple[str, ResidualFitConfig]) -> np.ndarray | str:
    path, config = job
    pixels = _read(path)
    if isinstance(pixels, str):
        return pixels
    pixels = apply_processing(pixels, CONDITIONS["matched"])
    return residual_statistics(grid_tiles(pixels, config.patch_size, config.tiles))
