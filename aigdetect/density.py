"""One-class detection: a density model of real-photo features.

Features of real camera photos are whitened (PCA) and modelled by a Gaussian
mixture. No AI image is needed to fit it, so it is not tied to the generators
of the day.

The statistic is two-sided: the *atypicality* of an image is how far its
log-likelihood lies from the median log-likelihood of held-out real photos, in
either direction. A low likelihood is the classic anomaly; a likelihood *higher*
than real photos ever reach is one too (the typicality test of Nalisnick et al.,
2019: out-of-distribution inputs can be more likely than the training data). AI
images do both: on held-out real photos against AI images of the training
generators (``runs/exp`` in the model card), the plain negated log-likelihood
ranked AI images below real ones (AUC 0.33 as-is, 0.45 matched) because their
smooth pixels sit in the dense core of the mixture; atypicality ranks them
above (0.65 and 0.58).

The decision threshold is calibrated on *held-out* real photos: the atypicality
above which the target share (``fpr``) of real photos fall. Their
log-likelihoods are kept (:attr:`RealPhotoDensity.calibration_scores`): they set
the typical value, and any score can be placed as a percentile among them.
Everything is stored as plain arrays and JSON in one ``.npz`` file, read back
with ``allow_pickle=False``: never a pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from .calibration import Calibration
from .files import atomic_write

FORMAT = "aigdetect.density"
FORMAT_VERSION = 1
#: Candidate component counts for ``components="auto"`` (chosen by BIC).
AUTO_COMPONENTS = (1, 2, 3, 4, 5, 6, 8)


class DensityError(Exception):
    """A density file that cannot be used, or data that cannot be fitted."""


@dataclass
class RealPhotoDensity:
    """Whitening + Gaussian mixture over extractor features, scikit-learn style.

    ``fit`` learns it, ``calibrate`` keeps the held-out real photos' scores (the
    threshold follows from them), ``score_samples`` gives log-likelihoods,
    ``save``/``load`` round-trip.
    """

    components: int | str = "auto"
    covariance_type: str = "full"
    pca_dim: int = 32
    reg_covar: float = 1e-3
    seed: int = 0
    # learned state
    mixture: GaussianMixture | None = field(default=None, repr=False)
    pca: PCA | None = field(default=None, repr=False)
    fpr: float = math.nan
    calibration_scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    #: where the features came from (extractor hash, patches...), saved alongside
    provenance: dict[str, Any] = field(default_factory=dict)

    # -- fitting ------------------------------------------------------------
    def fit(self, features: np.ndarray) -> RealPhotoDensity:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise DensityError("need at least 2 feature vectors to fit a density")
        dim = int(min(self.pca_dim, features.shape[1], len(features) - 1))
        self.pca = PCA(n_components=dim, whiten=True, random_state=self.seed).fit(features)
        reduced = self.pca.transform(features)
        candidates = AUTO_COMPONENTS if self.components == "auto" else (int(self.components),)
        candidates = [k for k in candidates if k <= len(features)] or [1]
        fitted = [self._fit_mixture(reduced, k) for k in candidates]
        bics = [m.bic(reduced) for m in fitted]
        self.mixture = fitted[int(np.argmin(bics))]
        self.info = {
            "n_train": len(features),
            "feature_dim": int(features.shape[1]),
            "pca_dim": dim,
            "explained_variance": float(self.pca.explained_variance_ratio_.sum()),
            "components": int(self.mixture.n_components),
            "bic": {str(k): float(b) for k, b in zip(candidates, bics, strict=True)},
        }
        return self

    def _fit_mixture(self, reduced: np.ndarray, components: int) -> GaussianMixture:
        return GaussianMixture(
            n_components=components, covariance_type=self.covariance_type,
            reg_covar=self.reg_covar, init_params="k-means++", n_init=3,
            max_iter=500, random_state=self.seed,
        ).fit(reduced)

    def calibrate(self, real_features: np.ndarray, fpr: float) -> RealPhotoDensity:
        """Keep held-out real log-likelihoods (they set the typical value); the
        threshold is then the :class:`Calibration` of their atypicality at ``fpr``."""
        if not 0.0 < fpr < 1.0:
            raise DensityError(f"fpr must be between 0 and 1, not {fpr}")
        self.calibration_scores = np.sort(self.score_samples(real_features))
        self.fpr = float(fpr)
        return self

    # -- scoring ------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.mixture is None or self.pca is None:
            raise DensityError("density model is not fitted")

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """Log-likelihood of each feature vector under the real-photo mixture."""
        self._check_fitted()
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        return self.mixture.score_samples(self.pca.transform(features))

    @property
    def typical_log_likelihood(self) -> float:
        """Median log-likelihood of the held-out real photos: the centre of atypicality."""
        if len(self.calibration_scores) == 0:
            raise DensityError("no calibration scores: calibrate() first")
        return float(np.median(self.calibration_scores))

    def atypicality(self, features: np.ndarray) -> np.ndarray:
        """Atypicality of each feature vector: the one-class detector's raw score."""
        return self.atypicality_of(self.score_samples(features))

    def atypicality_of(self, log_likelihoods: np.ndarray) -> np.ndarray:
        """Distance of each log-likelihood from the typical real one (higher = more
        AI-like)."""
        return np.abs(np.asarray(log_likelihoods) - self.typical_log_likelihood)

    def _calibration_atypicality(self) -> np.ndarray:
        return np.sort(self.atypicality_of(self.calibration_scores))

    @property
    def calibration(self) -> Calibration:
        """The held-out calibration as a detector calibration on atypicality: the same
        threshold rule as every other detector's (the empirical quantile)."""
        return Calibration.fit(self._calibration_atypicality(), self.fpr)

    @property
    def threshold(self) -> float:
        """The atypicality above which at most ``fpr`` of the calibration photos lie
        (NaN before :meth:`calibrate`)."""
        if len(self.calibration_scores) == 0 or not math.isfinite(self.fpr):
            return math.nan
        return self.calibration.threshold

    # -- persistence --------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write plain arrays + a JSON header to one ``.npz`` (no pickle), atomically."""
        self._check_fitted()
        m, p = self.mixture, self.pca
        header = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "covariance_type": self.covariance_type, "reg_covar": self.reg_covar,
            "seed": self.seed, "threshold": self.threshold, "fpr": self.fpr,
            "info": self.info, "provenance": self.provenance,
        }
        with atomic_write(path) as temporary, open(temporary, "wb") as handle:
            np.savez(
                handle, header=np.array(json.dumps(header)),
                pca_mean=p.mean_, pca_components=p.components_,
                pca_explained_variance=p.explained_variance_,
                weights=m.weights_, means=m.means_, covariances=m.covariances_,
                precisions_cholesky=m.precisions_cholesky_,
                calibration_scores=self.calibration_scores,
            )

    @classmethod
    def load(cls, path: str | Path) -> RealPhotoDensity:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise DensityError(f"{path}: no such file") from None
        except Exception as error:
            raise DensityError(f"{path}: not a density file ({error})") from None
        try:
            header = json.loads(str(arrays["header"]))
        except (KeyError, ValueError):
            raise DensityError(f"{path}: not an aigdetect density file") from None
        if header.get("format") != FORMAT:
            raise DensityError(f"{path}: not an aigdetect density file")
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise DensityError(f"{path}: written by a newer aigdetect; upgrade to read it")
        try:
            return cls._from_arrays(header, arrays)
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise DensityError(f"{path}: incomplete or damaged density file ({error})") from None

    @classmethod
    def _from_arrays(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        # the header's threshold is for readers: it is derived again from the scores
        density = cls(covariance_type=header["covariance_type"], reg_covar=header["reg_covar"],
                      seed=header["seed"], fpr=header["fpr"],
                      info=header.get("info", {}), provenance=header.get("provenance", {}))
        density.pca = _rebuild_pca(arrays)
        density.mixture = _rebuild_mixture(arrays, header["covariance_type"])
        density.calibration_scores = arrays["calibration_scores"]
        density.components = int(density.mixture.n_components)
        density.pca_dim = int(arrays["pca_components"].shape[0])
        return density


def _rebuild_pca(arrays: dict[str, np.ndarray]) -> PCA:
    pca = PCA(n_components=arrays["pca_components"].shape[0], whiten=True)
    pca.mean_ = arrays["pca_mean"]
    pca.components_ = arrays["pca_components"]
    pca.explained_variance_ = arrays["pca_explained_variance"]
    pca.n_components_ = arrays["pca_components"].shape[0]
    pca.n_features_in_ = arrays["pca_mean"].shape[0]
    return pca


def _rebuild_mixture(arrays: dict[str, np.ndarray], covariance_type: str) -> GaussianMixture:
    mixture = GaussianMixture(n_components=len(arrays["weights"]),
                              covariance_type=covariance_type)
    mixture.weights_ = arrays["weights"]
    mixture.means_ = arrays["means"]
    mixture.covariances_ = arrays["covariances"]
    mixture.precisions_cholesky_ = arrays["precisions_cholesky"]
    mixture.n_features_in_ = arrays["means"].shape[1]
    mixture.converged_ = True
    return mixture
