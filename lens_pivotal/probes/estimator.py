"""One layer's pivotal-token probe as a scikit-learn classifier, to drop into ``cross_val_score``, ``GridSearchCV``
or a ``Pipeline``.

``LinearProbe`` is the estimator :class:`~lens_pivotal.LayerProbes` fits for every layer at once (the same L-BFGS
solve, L2 penalty, class weights and standardisation), on one ``[n_rows, d_model]`` array; it fits only what it is
given, and model selection stays outside it, as in scikit-learn. ``LayerProbes`` keeps the all-layers-at-once speed.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from lens_pivotal.probes.training import MIN_SCALE, balanced_weights, fit_lbfgs


class LinearProbe(ClassifierMixin, BaseEstimator):
    """L2-penalised logistic regression on one layer's residual rows, solved as :class:`~lens_pivotal.LayerProbes`
    solves each of its layers.

    Args:
        l2: the penalty on the mean training loss, ``l2 / 2 * |w|^2`` (scikit-learn's ``C`` is ``1 / (l2 * n_rows)``).
        standardize: fit on standardised features (the training rows' mean and population standard deviation, as
            scikit-learn's ``StandardScaler``); ``coef_`` is in the input's own units either way.
        class_weight: ``"balanced"`` weighs each class by ``n / (2 n_class)``; a dict ``{class: weight}`` as
            scikit-learn's; ``None`` weighs every row alike.
        max_iter: L-BFGS iterations (a ``ConvergenceWarning`` says when they run out).
        dtype: the solve's precision.
    """

    def __init__(
        self,
        l2: float = 1e-2,
        *,
        standardize: bool = True,
        class_weight: Literal["balanced"] | dict[Any, float] | None = "balanced",
        max_iter: int = 500,
        dtype: Literal["float32", "float64"] = "float64",
    ) -> None:
        self.l2 = l2
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.dtype = dtype

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearProbe:
        """Fit on every row of ``X`` (``[n_rows, d_model]``) with binary labels ``y``."""
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"Only binary classification is supported. y must hold two classes, got {len(self.classes_)} class"
                             f"{'es' if len(self.classes_) > 1 else ''}: {self.classes_.tolist()}")  # fmt: skip
        x = torch.tensor(X, dtype=getattr(torch, self.dtype))  # a copy: X may be a read-only memmap
        mean, scale = self._standardisation(x)
        labels = torch.as_tensor(y == self.classes_[1]).to(x).unsqueeze(0)
        weights = self._row_weights(labels)
        heads = fit_lbfgs(((x - mean) / scale).unsqueeze(0), labels, weights, torch.tensor(float(self.l2)),
                          max_iter=self.max_iter)
        weight = heads.weight[0, 0] / scale
        bias = heads.bias[0, 0] - weight @ mean
        self.coef_, self.intercept_ = weight.double().numpy()[None], np.array([float(bias)])
        self.n_iter_ = np.array([heads.n_iter])
        return self

    def _row_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """Each row's weight in the loss, from ``class_weight``."""
        every_row = torch.ones_like(labels)
        if self.class_weight == "balanced":
            return balanced_weights(labels, every_row)
        if self.class_weight is None:
            return every_row
        if not isinstance(self.class_weight, dict):
            raise ValueError(f"class_weight must be 'balanced', a dict or None, got {self.class_weight!r}")
        negative, positive = (float(self.class_weight.get(name, 1.0)) for name in self.classes_)
        return torch.where(labels > 0.5, positive, negative).to(labels)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _standardisation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and scale, as :class:`~lens_pivotal.LayerProbes` computes them (or 0 and 1)."""
        if not self.standardize:
            return torch.zeros(x.shape[1]).to(x), torch.ones(x.shape[1]).to(x)
        return x.mean(0), x.std(0, correction=0).clamp_min(MIN_SCALE)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The logit of the second class (``classes_[1]``, the pivotal one) per row, ``[n_rows]``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[n_rows, 2]``: the probability of ``classes_[0]`` and of ``classes_[1]``."""
        positive = 1 / (1 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - positive, positive])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The more probable class of each row."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(int)]
