"""Per-layer linear probes for "the NEXT token is pivotal": the estimator.

``LayerProbes`` holds one ``Linear(d_model, 1)`` + sigmoid per cached layer, trained all at once
(:mod:`lens_pivotal.probes.training`), each layer's L2 chosen by grouped cross-validation
(:mod:`lens_pivotal.probes.selection`), and saved as safetensors weights beside a JSON :class:`ProbeConfig`
(:mod:`lens_pivotal.probes.config`) that names the base model, so loading onto another model is caught.
:func:`~lens_pivotal.probes.evaluation.train_probes` adds held-out metrics, baselines and controls;
:mod:`lens_pivotal.probes.scoring` scores new text with fitted probes.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from lens_pivotal._io import atomic_dir
from lens_pivotal.model import Layer, ModelBound, hook_layer, layer_label, read_hooks
from lens_pivotal.probes.calibration import FalsePositiveRate, Threshold, operating_point, threshold_at_fpr
from lens_pivotal.probes.config import CONFIG_FILE, WEIGHTS_FILE, ProbeConfig, ProbeSettings, checked_settings
from lens_pivotal.probes.metrics import LayerMetrics, auroc_per_row
from lens_pivotal.probes.selection import choose_l2, fit_heads
from lens_pivotal.probes.training import MIN_SCALE, Heads


class LayerProbes(ModelBound):
    """One logistic probe per layer of a ``[n_layers, n_rows, d_model]`` activation tensor.

    Build with :meth:`from_model` (or :func:`~lens_pivotal.probes.train_probes`), then ``fit``; ``predict_proba`` gives
    ``[n_layers, n_rows]`` probabilities that the next token is pivotal.
    """

    _what = "these probes"

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        n_layers, d_model = len(config.hook_names), config.d_model
        self.weight = torch.zeros(n_layers, d_model)
        self.bias = torch.zeros(n_layers)
        self.mean = torch.zeros(n_layers, d_model)
        self.scale = torch.ones(n_layers, d_model)
        self.fitted = False

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        layers: Sequence[int] | None = None,
        embeddings: bool = False,
        settings: ProbeSettings | None = None,
    ) -> LayerProbes:
        """Unfitted probes for the layers ``cache_resid_post(model, ..., layers=layers, embeddings=embeddings)``
        returns, trained as ``settings`` says (default: ``ProbeSettings()``)."""
        n_model_layers, hook_names = read_hooks(model, layers, embeddings)
        config = ProbeConfig(model.cfg.model_name, model.cfg.d_model, n_model_layers, hook_names, checked_settings(settings))
        return cls(config)

    @property
    def n_layers(self) -> int:
        """How many layers are probed."""
        return len(self.config.hook_names)

    @property
    def best_layer(self) -> Layer:
        """The block (a hook name for the embedding stream) with the highest grouped cross-validated AUROC on the
        training problems: chosen without the held-out problems, so that layer's held-out metrics are an unbiased
        estimate. Per-layer results are in slot order: read them at ``probes.slot(probes.best_layer)``."""
        self._require_evaluated()
        return hook_layer(self.config.hook_names[self.config.best_layer])

    @property
    def best_heldout_layer(self) -> Layer:
        """The block with the highest held-out AUROC. Optimistic: picked on the test problems, its held-out AUROC is
        biased upwards (report :attr:`best_layer`'s instead)."""
        self._require_evaluated()
        heldout_best = self.config.best_heldout_layer
        return hook_layer(self.config.hook_names[self.config.best_layer if heldout_best is None else heldout_best])

    @property
    def metrics(self) -> LayerMetrics:
        """Held-out metrics per layer, with bootstrap intervals over groups."""
        self._require_evaluated()
        settings = self.config.settings
        return LayerMetrics.from_dict(self.config.metrics, settings.n_bootstrap, 0.95)

    @property
    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        """Held-out metrics of each baseline given to :func:`~lens_pivotal.probes.train_probes` (``{}`` without any), scored on the same
        held-out problems as the probes: ``baseline_metrics["entropy"]["auroc"]``, ``["auroc_low"]``,
        ``["auroc_high"]``, and the same for every other metric (see :mod:`lens_pivotal.probes.baselines`)."""
        return self.config.baseline_metrics or {}

    @property
    def versus_best_baseline(self) -> dict[str, Any] | None:
        """Per layer, probe AUROC minus the best baseline's (the one with the highest held-out AUROC, which favours
        the baselines) with a paired bootstrap interval over the same resampled problems: ``{"baseline", "value",
        "low", "high"}``; ``None`` without baselines."""
        return self.config.versus_best_baseline

    @property
    def with_uncertainty(self) -> dict[str, Any] | None:
        """Does the residual stream add to the model's own uncertainty? Per layer, the held-out AUROC of the probe's
        logit together with the uncertainty baselines (``entropy`` and ``top1_prob``, those given: a logistic
        regression fitted on the training problems, on out-of-fold probe logits there) with its interval, and that
        AUROC minus the uncertainty baselines' together (one logistic regression on them alone) with a paired
        interval: ``{"features", "auroc", "auroc_low", "auroc_high", "uncertainty_auroc", "uncertainty_auroc_low",
        "uncertainty_auroc_high", "minus_uncertainty": {"value", "low", "high"}}``; ``None`` without either
        baseline."""
        return self.config.with_uncertainty

    @property
    def selectivity(self) -> Float[Tensor, " n_layers"]:
        """Held-out AUROC minus the control task's (Hewitt & Liang: token types given random labels), per layer: what
        the probe reads beyond memorising the current token's type. Needs ``control_types`` in :func:`~lens_pivotal.probes.train_probes`."""
        self._require_evaluated()
        if self.config.control_task_auroc is None:
            raise RuntimeError("no control task was trained: pass control_types=examples.current_tokens to train_probes")
        return self.metrics.values["auroc"] - torch.tensor(self.config.control_task_auroc)

    @property
    def permutation_p(self) -> Float[Tensor, " n_layers"]:
        """Per layer, the permutation p-value of the held-out AUROC (``settings.n_permutations`` probes trained on
        permuted labels form the null; see :mod:`lens_pivotal.probes.controls`)."""
        self._require_evaluated()
        if self.config.permutation_p is None:
            raise RuntimeError("no permutation null was trained: ProbeSettings(n_permutations=0)")
        return torch.tensor(self.config.permutation_p)

    @property
    def layer_labels(self) -> list[str]:
        """Block number of each probed layer (``"emb"`` for the embedding stream)."""
        return [layer_label(name) for name in self.config.hook_names]

    def fit(
        self,
        acts: Float[Tensor, "n_layers n_rows d_model"],
        labels: Sequence[int] | Tensor,
        groups: Sequence[str] | None = None,
    ) -> LayerProbes:
        """Train every layer's probe on all the rows given, as scikit-learn's ``LogisticRegressionCV`` does: the L2 of
        each layer is chosen by grouped cross-validation on these rows (unless ``l2`` is fixed). Nothing is held out
        or evaluated here: :func:`~lens_pivotal.probes.train_probes` splits off held-out groups, trains the controls and reports
        metrics; :func:`~lens_pivotal.probes.evaluate_probes` scores fitted probes on any rows.

        Args:
            acts: activations from :func:`lens_pivotal.cache_resid_post` (``[n_layers, n_rows, d_model]``), on
                the device to train on.
            labels: 1 where the next token is pivotal, else 0, per row.
            groups: each row's problem (e.g. ``ProbeExamples.groups``): cross-validation folds never split one.
                Without groups every row is its own group, which leaks when rows of one problem are correlated.
        """
        x, y, groups = self.check_training_data(acts, labels, groups)
        self.fit_heads(x, y.unsqueeze(0), groups)
        self.config = replace(self.config, n_train=len(groups))
        return self

    def _clear_results(self) -> None:
        """Forget every result of an earlier fit or evaluation (scikit-learn's convention: ``fit`` starts afresh)."""
        config = self.config
        self.config = ProbeConfig(
            config.model_name, config.d_model, config.n_model_layers, config.hook_names, config.settings,
            model_source=config.model_source,
        )
        self.fitted = False

    def fit_heads(self, x: Float[Tensor, "n_layers n_rows d_model"], labels: Float[Tensor, "n_heads n_rows"], groups: list[str]) -> Heads:
        """Fit the probes on ``labels[0]`` as :meth:`fit` does and, beside them with the same standardisation and L2,
        a head per further row of ``labels`` (a control task, permuted labels); returns every head (they read
        :meth:`standardize`'s output). ``x`` and ``groups`` as :meth:`check_training_data` returns them."""
        self._clear_results()
        self._fit_standardization(x.to(getattr(torch, self.config.settings.dtype)))
        x = self.standardize(x)
        l2 = self._choose_l2(x, labels[0], groups)
        heads = fit_heads(x, labels, groups, l2.unsqueeze(-1).expand(-1, len(labels)), self.config.settings)
        self.weight, self.bias = heads.weight[:, 0].float().cpu(), heads.bias[:, 0].float().cpu()
        self.config = replace(self.config, l2=[float(value) for value in l2])
        self.fitted = True
        return heads

    def predict_proba(self, acts: Float[Tensor, "n_layers n_rows d_model"]) -> Float[Tensor, "n_layers n_rows"]:
        """Probability that the next token is pivotal, per layer and row (computed on ``acts``' device)."""
        self._require_fitted()
        return self.proba_at(self.config.hook_names, self._check_acts(acts))

    def decision_function(self, acts: Float[Tensor, "n_layers n_rows d_model"]) -> Float[Tensor, "n_layers n_rows"]:
        """The probes' logits (before the sigmoid of :meth:`predict_proba`), per layer and row."""
        self._require_fitted()
        return self.logits_at(self.config.hook_names, self._check_acts(acts))

    def logits_at(
        self, layers: Sequence[Layer], acts: Float[Tensor, "n_chosen n_rows d_model"]
    ) -> Float[Tensor, "n_chosen n_rows"]:
        """Logits from the probes of ``layers`` (blocks or hook names) only, ``acts[k]`` read by the probe of
        ``layers[k]`` (differentiable in ``acts``)."""
        self._require_fitted()
        index = torch.as_tensor([self.slot(layer) for layer in layers], dtype=torch.long)
        x = self._standardized(acts.float(), index)
        logits = torch.einsum("lnd,ld->ln", x, self.weight[index].to(x.device))
        return logits + self.bias[index].to(x.device).unsqueeze(-1)

    def proba_at(
        self, layers: Sequence[Layer], acts: Float[Tensor, "n_chosen n_rows d_model"]
    ) -> Float[Tensor, "n_chosen n_rows"]:
        """Probabilities from the probes of ``layers`` (blocks or hook names) only, ``acts[k]`` read by the probe of
        ``layers[k]``."""
        return torch.sigmoid(self.logits_at(layers, acts))

    def residual_direction(self, layer: Layer) -> tuple[Float[Tensor, " d_model"], float]:
        """The probe of ``layer`` (a block or a hook name) in residual-stream units: ``(direction, offset)`` with
        logit ``= resid @ direction + offset`` (the standardisation undone)."""
        self._require_fitted()
        index = self.slot(layer)
        direction = self.weight[index] / self.scale[index]
        return direction, float(self.bias[index] - self.mean[index] @ direction)

    def heldout_scores(self, label: int, layer: Layer | None = None) -> np.ndarray:
        """The held-out rows' scores of one class (1: pivotal) at ``layer`` (default: the best layer), as
        :func:`~lens_pivotal.probes.train_probes` saved them (``config.calibration``)."""
        calibration = self.config.calibration
        if calibration is None:
            raise RuntimeError("these probes hold no held-out scores: train them with train_probes (or a newer version)")
        slot = self.slot(self.best_layer if layer is None else layer)
        return np.asarray(calibration["positive_scores" if label else "negative_scores"][slot], dtype=np.float64)

    def threshold_at_fpr(self, rate: float, layer: Layer | None = None) -> float:
        """The score threshold that lets through at most ``rate`` of the held-out negatives at ``layer`` (default:
        the best layer); see :mod:`lens_pivotal.probes.calibration`."""
        return threshold_at_fpr(self.heldout_scores(0, layer), rate)

    def resolve_threshold(self, threshold: Threshold, layer: Layer | None = None) -> float:
        """A score threshold: ``threshold`` itself (a probability), or :meth:`threshold_at_fpr` of a
        :class:`~lens_pivotal.probes.FalsePositiveRate`."""
        if isinstance(threshold, FalsePositiveRate):
            return self.threshold_at_fpr(threshold.rate, layer)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a probability or a FalsePositiveRate, got {threshold!r}")
        return float(threshold)

    def operating_point(self, threshold: Threshold, layer: Layer | None = None, prior: float | None = None) -> dict[str, float]:
        """A threshold's held-out false-positive rate, recall and precision at ``prior`` (default: the held-out
        rows' share of pivots); see :func:`lens_pivotal.probes.calibration.operating_point`."""
        value = self.resolve_threshold(threshold, layer)
        return operating_point(value, self.heldout_scores(1, layer), self.heldout_scores(0, layer), prior)

    def predict(self, acts: Float[Tensor, "n_layers n_rows d_model"]) -> Float[Tensor, "n_layers n_rows"]:
        """1 where :meth:`predict_proba` is at least 0.5, else 0."""
        return (self.predict_proba(acts) >= 0.5).long()

    def score(self, acts: Float[Tensor, "n_layers n_rows d_model"], labels: Sequence[int] | Tensor) -> Float[Tensor, " n_layers"]:
        """AUROC of each layer's probe on ``acts`` against ``labels``."""
        scores = self.predict_proba(acts).double().cpu()
        return auroc_per_row(scores, as_labels(labels, scores.shape[1])).float()

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``probes.safetensors`` and ``config.json`` to ``directory`` (atomically: all or nothing).

        Raises:
            FileExistsError: ``directory`` exists and is not empty, unless ``overwrite`` (which replaces it whole).
        """
        self._require_fitted()
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale}
        with atomic_dir(directory, overwrite=overwrite) as scratch:
            save_file({name: value.contiguous().float() for name, value in tensors.items()}, scratch / WEIGHTS_FILE)
            (scratch / CONFIG_FILE).write_text(self.config.to_json())
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any | None = None) -> LayerProbes:
        """Probes saved by :meth:`save`; with ``model``, check that they were trained on a model of its shape.

        Unknown config keys (from a newer version) are ignored with a warning; a ``model`` of the same shape but
        another name gets a warning.

        Raises:
            FileNotFoundError: the directory or one of its two files is missing.
            ValueError: the files disagree with each other, or ``model`` has another ``d_model`` or layer count.
        """
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} holds no {name}: not a directory written by LayerProbes.save")
        probes = cls(ProbeConfig.from_json((directory / CONFIG_FILE).read_text(), str(directory / CONFIG_FILE)))
        tensors = load_file(directory / WEIGHTS_FILE)
        for name, expected in (("weight", probes.weight), ("bias", probes.bias), ("mean", probes.mean), ("scale", probes.scale)):
            if name not in tensors or tensors[name].shape != expected.shape:
                found = tuple(tensors[name].shape) if name in tensors else "nothing"
                raise ValueError(f"{directory / WEIGHTS_FILE}: {name!r} should be {tuple(expected.shape)}, found {found}")
            setattr(probes, name, tensors[name])
        probes.fitted = True
        if model is not None:
            probes._check_loaded(model)
        return probes

    def __len__(self) -> int:
        return self.n_layers

    def __getitem__(self, layer: Layer) -> LayerProbes:
        """The probe of ``layer`` (a block, negatives from the model's last, or a hook name) as a one-layer
        ``LayerProbes``, with that layer's part of the saved results."""
        index = self.slot(layer)
        single = LayerProbes(self.config.for_layer(index))
        for name in ("weight", "bias", "mean", "scale"):
            setattr(single, name, getattr(self, name)[index : index + 1].clone())
        single.fitted = self.fitted
        return single

    def __iter__(self) -> Iterator[LayerProbes]:
        """Each probed layer's probe (one-layer ``LayerProbes``), in slot order."""
        return (self[layer] for layer in self.layers)

    def to(self, device: str | torch.device) -> LayerProbes:
        """Move the weights and normalisation to ``device`` (in place; returns ``self``, like ``nn.Module.to``)."""
        for name in ("weight", "bias", "mean", "scale"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __repr__(self) -> str:
        config = self.config
        state = f"best layer {self.layer_labels[self.best_layer]}" if self.fitted and config.best_layer is not None else "unfitted"
        return f"LayerProbes({config.model_name!r}, {self.n_layers} layers, d_model {config.d_model}, {config.settings.solver}; {state})"

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("these probes are not fitted yet: call fit(acts, labels, groups) or LayerProbes.load(dir)")

    def _check_acts(self, acts: Tensor) -> Tensor:
        require_layered(acts)
        if acts.shape[0] != self.n_layers or acts.shape[2] != self.config.d_model:
            raise ValueError(
                f"acts has {acts.shape[0]} layers of width {acts.shape[2]}; these probes read {self.n_layers} layers "
                f"({', '.join(self.layer_labels[:4])}{', ...' if self.n_layers > 4 else ''}) of width {self.config.d_model}"
            )
        return acts if acts.dtype == torch.float64 else acts.float()

    def _require_evaluated(self) -> None:
        self._require_fitted()
        if self.config.metrics is None or self.config.best_layer is None:
            raise RuntimeError(
                "these probes hold no held-out evaluation (fit trains on everything it is given): use train_probes, "
                "or lens_pivotal.probes.evaluate_probes on rows they were not trained on"
            )

    def check_training_data(
        self, acts: Tensor, labels: Any, groups: Sequence[str] | None
    ) -> tuple[Float[Tensor, "n_layers n_rows d_model"], Float[Tensor, " n_rows"], list[str]]:
        """``(acts, labels, groups)`` checked against these probes' shape (a clear error for anything else), with
        every row its own group when ``groups`` is ``None``."""
        x = self._check_acts(acts)
        y = as_labels(labels, x.shape[1]).to(x)
        if y.sum() == 0 or y.sum() == len(y):
            raise ValueError("labels hold a single class: probes need both pivotal (1) and other (0) rows")
        if groups is None:
            groups = [str(i) for i in range(len(y))]
        if isinstance(groups, (str, bytes)) or len(groups) != len(y):
            raise ValueError(f"groups must give one group per row: {len(y)} rows, got {len(groups)} groups")
        return x, y, [str(group) for group in groups]

    def _fit_standardization(self, x: Tensor) -> None:
        """Mean and population standard deviation per layer and feature, as scikit-learn's ``StandardScaler``."""
        if self.config.settings.standardize:
            self.mean = x.mean(dim=1).float().cpu()
            self.scale = x.std(dim=1, correction=0).clamp_min(MIN_SCALE).float().cpu()
        else:
            self.mean = torch.zeros(self.n_layers, self.config.d_model)
            self.scale = torch.ones(self.n_layers, self.config.d_model)

    def _choose_l2(self, x: Tensor, y: Tensor, groups: list[str]) -> Float[Tensor, " n_layers"]:
        """Each layer's L2: the fixed one, or the grid value grouped cross-validation picks (recording its losses)."""
        settings = self.config.settings
        if not settings.chooses_l2:
            self.config.cv_loss = None
            return torch.full((self.n_layers,), settings.l2 or 0.0).to(x)
        if len(set(groups)) < 2:
            raise ValueError("choosing l2 by grouped cross-validation needs at least 2 training groups; pass l2=...")
        l2, table = choose_l2(x, y, groups, settings)
        self.config.cv_loss = [[value if value != float("inf") else None for value in row] for row in table.tolist()]
        return l2

    def _standardized(self, x: Tensor, layers: Tensor | slice = slice(None)) -> Tensor:
        """``x`` (``[n_chosen, n_rows, d_model]``, read by the probes of ``layers``) in the probes' normalised units."""
        return (x - self.mean[layers].to(x).unsqueeze(1)) / self.scale[layers].to(x).unsqueeze(1)

    def standardize(self, acts: Float[Tensor, "n_layers n_rows d_model"]) -> Float[Tensor, "n_layers n_rows d_model"]:
        """``acts`` as the heads read them: in the training dtype and, with ``settings.standardize``, the probes'
        normalised units (mean and spread of the rows they were fitted on)."""
        x = acts.to(getattr(torch, self.config.settings.dtype))
        return self._standardized(x) if self.config.settings.standardize else x


def require_layered(acts: Any) -> None:
    """Raise unless ``acts`` is a ``[n_layers, n_rows, d_model]`` tensor."""
    if not isinstance(acts, Tensor) or acts.ndim != 3:
        raise ValueError(f"acts must be a [n_layers, n_rows, d_model] tensor, got {getattr(acts, 'shape', type(acts))}")


def as_labels(labels: Any, n_rows: int) -> Tensor:
    """``labels`` as a float tensor of ``n_rows`` zeros and ones; a clear error naming the first bad row."""
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).float().flatten()
    if len(y) != n_rows:
        raise ValueError(f"labels has {len(y)} entries but acts has {n_rows} rows")
    if not torch.all((y == 0) | (y == 1)):
        bad = int(torch.nonzero((y != 0) & (y != 1))[0])
        raise ValueError(f"labels must be 0 or 1; row {bad} is {y[bad].item()!r}")
    return y
