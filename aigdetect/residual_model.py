"""The residual detector: a linear classifier on hand-crafted residual statistics.

Why a second supervised detector beside the binary network: on hundreds of
training images a network learns the training generators; a regularised linear
model on a few hundred fixed statistics (:mod:`aigdetect.residuals`) has far
less to overfit, fits in seconds on a CPU (so leave-one-generator-out
retraining is cheap), and errs differently from the networks, which is what a
fusion needs.

What it reads of a tile set (:class:`ResidualInputs`): the tiles re-encoded as one
JPEG at q90 (so that every image reaches it through the same last compression,
whatever its file was), then the residual statistics of :mod:`aigdetect.residuals`;
when fitted with ``pretrained_features`` (``fit-residual --pretrained-features``), the
pooled features of a pretrained ImageNet network of the same tiles
(:mod:`aigdetect.backbone`); and, when fitted with ``coding_costs``
(``fit-residual --coding-costs``; off for the shipped model), the luma's
prediction-error counts, which a first stage, a real-photo coding-cost model
(:mod:`aigdetect.coding_cost`, fitted on the real training photos), turns into bits
spent against bits expected.

Training follows the binary detector's rules (:mod:`aigdetect.binary_data`):
both classes augmented alike, each group weighted by the square root of its
size, the same validation split. Weights are plain arrays in one ``.npz``
(no pickle): ``fit`` / ``decision_function`` / ``save`` / ``load``, as in
scikit-learn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from . import __version__
from .backbone import features_of_sets
from .binary_data import Augmentation, split_for_validation, usable_files
from .coding_cost import COUNTS_SHAPE, COUNTS_SIZE, STATISTICS, CodingCostModel, error_counts
from .files import atomic_write, file_sha256
from .labelled import AI, REAL, LabelledFile
from .patches import (
    CONDITIONS,
    ImageReadError,
    apply_processing,
    evenly_spread,
    grid_tiles,
    load_image,
    recompressed_tiles,
)
from .residuals import residual_statistics

#: scikit-learn's ``C``: chosen by ``benchmarks/residual_selection.py`` (0.03 beat 0.1
#: by 0.003-0.006 mean AUC with two augmentation draws and two statistic sets)
DEFAULT_REGULARISATION = 0.03
FORMAT = "aigdetect.residual-detector"
#: 1: statistics of the tiles as decoded; 2: the header says how the tiles are read
#: (``inputs``), with the coding-cost model's tables when it has one; 3: the inputs may
#: hold pretrained features. A model is written in the lowest version that holds it, so
#: older aigdetects still read what they can score and refuse what they cannot.
FORMAT_VERSION = 3
#: JPEG quality of the re-encoding before the statistics (``ResidualInputs``), for new fits
DEFAULT_RECOMPRESS_QUALITY = 90
#: whether new fits read the pretrained backbone's features (``ResidualInputs``)
DEFAULT_PRETRAINED_FEATURES = True


class ResidualModelError(Exception):
    """A residual detector file that cannot be used, or data it cannot be fitted on."""


@dataclass(frozen=True)
class ResidualInputs:
    """What the residual classifier reads of an (N, 3, P, P) tile set.

    ``recompress_quality``: the tiles are first re-encoded as one JPEG at this quality
    (None: read as decoded). Every image then reaches the statistics through the same
    last compression, so the evidence file's own storage (a lossless PNG, a camera's
    JPEG at q95, a WebP preview) decides less. The same pixels stored losslessly
    instead of at JPEG q90 moved the scores of held-out real photos by -0.5 to -0.9
    log-odds and of AI images by -0.9 to -1.8 without it, by 0.0 with it; selection
    mean AUC 0.873 -> 0.881 and 0.885 -> 0.890 (two augmentation draws).
    ``pretrained_features``: the pretrained backbone's pooled features of the same tiles
    (:mod:`aigdetect.backbone`) follow the statistics.
    ``coding_costs``: the luma's prediction-error counts come last, for the
    classifier's coding-cost model (:mod:`aigdetect.coding_cost`).
    """

    recompress_quality: int | None = None
    coding_costs: bool = False
    #: False here, whatever new fits default to (``ResidualFitConfig``): the headers of
    #: format-2 files, written before the features existed, leave it out
    pretrained_features: bool = False

    def __post_init__(self) -> None:
        quality = self.recompress_quality
        if quality is not None and (type(quality) is not int or not 1 <= quality <= 100):
            raise ValueError(f"recompress_quality must be 1-100 or None, not {quality!r}")
        for name in ("coding_costs", "pretrained_features"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """The row of one tile set (at most ``MAX_POOLED_TILES`` of it, evenly spread)."""
        return self.rows([tiles[evenly_spread(len(tiles), MAX_POOLED_TILES)]])[0]

    def each_tile(self, tiles: np.ndarray) -> np.ndarray:
        """(N, dim): each tile read alone, as ``self(tiles[i:i + 1])`` reads it (the heat
        map's per-tile scores)."""
        return self.rows([tiles[i:i + 1] for i in range(len(tiles))])

    def rows(self, tile_sets: Sequence[np.ndarray]) -> np.ndarray:
        """One row per tile set; the backbone sees every set's mosaics in batches."""
        if self.recompress_quality is not None:
            tile_sets = [recompressed_tiles(tiles, self.recompress_quality)
                         for tiles in tile_sets]
        parts = [np.stack([residual_statistics(tiles) for tiles in tile_sets])]
        if self.pretrained_features:
            parts.append(features_of_sets(tile_sets))
        if self.coding_costs:
            parts.append(np.stack([error_counts(tiles).ravel() for tiles in tile_sets]))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def dim(self, patch_size: int) -> int:
        """Length of the vector for tiles of ``patch_size``."""
        return len(self(np.zeros((1, 3, patch_size, patch_size), np.uint8)))


#: Tiles the residual statistics pool at most, evenly spread over a larger set. They are
#: averages over the tiles, so more only costs memory: their float64 intermediates take
#: about 0.6 MB a tile, and a 250 MP "--patches all" scan (20,000 tiles) took 12 GB.
MAX_POOLED_TILES = 1_024


#: How the first residual detectors read their tiles (format 1 files).
LEGACY_INPUTS = ResidualInputs(recompress_quality=None, coding_costs=False)


@dataclass
class ResidualClassifier:
    """Residual inputs -> [coding costs] -> standardised -> logistic regression; higher =
    more AI-like.

    With ``coding_costs``, ``fit`` first fits the coding-cost model on the rows
    labelled real, and the classifier reads its statistics beside the others.
    ``regularisation`` is scikit-learn's ``C`` (smaller = simpler model).
    """

    regularisation: float = DEFAULT_REGULARISATION
    inputs: ResidualInputs = LEGACY_INPUTS
    coding_: CodingCostModel | None = None
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    coef_: np.ndarray | None = None
    intercept_: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    #: (n, 32) uint8 SHA-256 digests of the files it was fitted on, sorted (None: not
    #: recorded, as in older files): ``calibrate`` and ``evaluate`` check it
    trained_sha256_: np.ndarray | None = None

    @property
    def input_dim(self) -> int:
        """Length of the input rows it was fitted on (``self.inputs``' length)."""
        if self.coef_ is None:
            raise ResidualModelError("the residual classifier is not fitted")
        return len(self.coef_) + (COUNTS_SIZE - STATISTICS if self.coding_ is not None else 0)

    def fit(self, inputs: np.ndarray, labels: np.ndarray,
            sample_weight: np.ndarray | None = None) -> ResidualClassifier:
        if self.inputs.coding_costs:
            self.coding_ = CodingCostModel().fit(inputs[labels == REAL, -COUNTS_SIZE:])
        features = self._features(inputs)
        self.mean_ = features.mean(axis=0)
        self.scale_ = features.std(axis=0)
        self.scale_[self.scale_ < 1e-12] = 1.0  # a constant statistic carries nothing
        model = LogisticRegression(C=self.regularisation, max_iter=5000)
        model.fit(self._standardise(features), labels, sample_weight=sample_weight)
        self.coef_, self.intercept_ = model.coef_[0], float(model.intercept_[0])
        return self

    def decision_function(self, inputs: np.ndarray) -> np.ndarray:
        """The log-odds of AI for each row of ``inputs`` (what ``self.inputs`` reads)."""
        if self.coef_ is None:
            raise ResidualModelError("the residual classifier is not fitted")
        return self._standardise(self._features(inputs)) @ self.coef_ + self.intercept_

    def _features(self, inputs: np.ndarray) -> np.ndarray:
        if self.coding_ is None:
            return inputs
        statistics, counts = inputs[:, :-COUNTS_SIZE], inputs[:, -COUNTS_SIZE:]
        return np.concatenate([statistics, self.coding_.statistics(counts)], axis=1)

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.nan_to_num(features) - self.mean_) / self.scale_

    def trained_on(self) -> set[str]:
        """Hex SHA-256 of every file it was fitted on (empty when not recorded)."""
        if self.trained_sha256_ is None:
            return set()
        return {bytes(row).hex() for row in self.trained_sha256_}

    def save(self, path: str | Path) -> None:
        """Plain arrays + a JSON header in one ``.npz``, written atomically."""
        if self.coef_ is None:
            raise ResidualModelError("the residual classifier is not fitted")
        arrays = {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_}
        if self.coding_ is not None:
            arrays.update(coding_bits=self.coding_.bits_, coding_entropy=self.coding_.entropy_)
        if self.trained_sha256_ is not None:  # an extra array: older readers skip it
            arrays["trained_sha256"] = self.trained_sha256_
        header = {"format": FORMAT, "format_version": _format_version(self.inputs),
                  "inputs": asdict(self.inputs), "regularisation": self.regularisation,
                  "intercept": self.intercept_, "provenance": self.provenance}
        with atomic_write(Path(path)) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, header=np.array(json.dumps(header)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ResidualClassifier:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                if header.get("format") != FORMAT:
                    raise ResidualModelError(f"{path}: not an aigdetect residual detector file")
                version = header.get("format_version", 0)
                if version > FORMAT_VERSION:
                    raise ResidualModelError(
                        f"{path}: written by a newer aigdetect; upgrade to read it")
                arrays = {key: data[key] for key in data.files if key != "header"}
                inputs = ResidualInputs(**header["inputs"]) if version >= 2 else LEGACY_INPUTS
                coding = (CodingCostModel(bits_=arrays["coding_bits"],
                                          entropy_=arrays["coding_entropy"])
                          if inputs.coding_costs else None)
                if coding is not None and (coding.bits_.shape != COUNTS_SHAPE
                                           or coding.entropy_.shape != COUNTS_SHAPE[:2]):
                    raise ValueError("its coding-cost tables have the wrong shape")
                return cls(regularisation=header["regularisation"], inputs=inputs,
                           coding_=coding,
                           mean_=arrays["mean"], scale_=arrays["scale"], coef_=arrays["coef"],
                           intercept_=float(header["intercept"]),
                           provenance=header["provenance"],
                           trained_sha256_=_digests(arrays.get("trained_sha256")))
        except FileNotFoundError:
            raise ResidualModelError(f"{path}: no such file") from None
        except ResidualModelError:
            raise
        except Exception as error:
            raise ResidualModelError(f"{path}: not a residual detector file ({error})") from None


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
    #: re-encode each tile set as JPEG at this quality first (None: as decoded)
    recompress_quality: int | None = DEFAULT_RECOMPRESS_QUALITY
    #: add the coding costs (:mod:`aigdetect.coding_cost`) to the statistics
    coding_costs: bool = False
    #: add the pretrained backbone's features (:mod:`aigdetect.backbone`)
    pretrained_features: bool = DEFAULT_PRETRAINED_FEATURES

    @property
    def inputs(self) -> ResidualInputs:
        return ResidualInputs(self.recompress_quality, self.coding_costs,
                              self.pretrained_features)


def fit_residual(files: Sequence[LabelledFile], config: ResidualFitConfig,
                 on_image: Callable[[int], None] | None = None) -> ResidualClassifier:
    """Fit on ``files`` minus the validation share (the binary detector's split, drawn
    from the same usable files, so images it holds out stay unseen by both),
    validated on that share. Files that do not open are counted as unreadable."""
    files, missing = usable_files(files)
    if on_image is not None and missing:
        on_image(len(missing))
    train, held_out = split_for_validation(files, config.val_fraction, config.seed)
    require_both_classes([f.label for f in train],  # before reading them
                         f"readable training images ({len(missing)} unreadable)" if missing
                         else "training images")
    features, labels, groups, failed = training_features(train, config, on_image)
    unreadable = {f.path: "missing, or not an image" for f in missing} | failed
    require_both_classes(labels, f"readable training images ({len(unreadable)} unreadable)")
    model = ResidualClassifier(config.regularisation, config.inputs)
    model.fit(features, labels, group_weights(labels, groups))
    model.trained_sha256_ = digest_array(file_sha256(f.path) for f in train
                                         if f.path not in failed)
    model.provenance = {
        "aigdetect_version": __version__, "config": vars(config).copy(),
        "train_images": len(train) - len(failed), "unreadable": len(unreadable),
        "unreadable_files": dict(list(unreadable.items())[:20]),
        "groups": {g: int(np.sum(groups == g)) // config.variants for g in sorted(set(groups))},
        "validation": validate(model, held_out, config, on_image)}
    return model


def _format_version(inputs: ResidualInputs) -> int:
    """The lowest file format that holds ``inputs``."""
    if inputs == LEGACY_INPUTS:
        return 1
    return 3 if inputs.pretrained_features else 2


def digest_array(hex_digests: Iterable[str]) -> np.ndarray:
    """Hex SHA-256 digests as a sorted (n, 32) uint8 array: plain numbers in an ``.npz``
    (no pickled strings), half the size of the hex text."""
    rows = sorted(bytes.fromhex(digest) for digest in hex_digests)
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), 32)


def _digests(stored: np.ndarray | None) -> np.ndarray | None:
    """A stored digest array, checked (a damaged file must not read as other hashes)."""
    if stored is None:
        return None
    if stored.dtype != np.uint8 or stored.ndim != 2 or stored.shape[1] != 32:
        raise ValueError("its training-file digests have the wrong shape")
    return stored


def require_both_classes(labels: Sequence[int] | np.ndarray, what: str) -> None:
    """A classifier of real against AI needs both."""
    for label in (REAL, AI):
        if not np.any(np.asarray(labels) == label):
            raise ResidualModelError(f"no {'real' if label == REAL else 'AI'} {what}")


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
    with ProcessPoolExecutor(workers, initializer=one_torch_thread) as pool:
        yield from _counted(pool.map(function, jobs, chunksize=4), on_image)


def one_torch_thread() -> None:
    """Each worker process runs the backbone on one thread: the workers share the cores."""
    torch.set_num_threads(1)


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
        rows.append(config.inputs(grid_tiles(augmented, config.patch_size, config.tiles)))
    return np.stack(rows)


def _matched_statistics(job: tuple[str, ResidualFitConfig]) -> np.ndarray | str:
    path, config = job
    pixels = _read(path)
    if isinstance(pixels, str):
        return pixels
    pixels = apply_processing(pixels, CONDITIONS["matched"])
    return config.inputs(grid_tiles(pixels, config.patch_size, config.tiles))
