"""Per-layer linear probes for "the NEXT token is pivotal", with an sklearn-like surface.

``LayerProbes`` holds one ``Linear(d_model, 1)`` + sigmoid per cached layer, trained all at once
(:mod:`lens_pivotal.probes.training`), scored on held-out groups with bootstrap intervals, judged against a control
task and a permutation null per layer (:mod:`lens_pivotal.probes.controls`), and saved as safetensors weights beside a JSON
:class:`ProbeConfig` that names the base model, so loading onto another model is caught.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Collection, ContextManager, Iterator, Literal, Sequence

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from lens_pivotal._io import atomic_dir
from lens_pivotal.model import UNKNOWN_MODEL, Layer, ModelBound, hook_layer, layer_label, read_hooks
from lens_pivotal.probes.examples import group_folds, group_split
from lens_pivotal.probes.baselines import check_baselines, fit_baselines, fit_logistic
from lens_pivotal.probes.calibration import Threshold, operating_point, threshold_at_fpr
from lens_pivotal.probes.controls import control_task_labels, permutation_labels, permutation_p_values
from lens_pivotal.probes.metrics import LayerMetrics, auroc, group_bootstrap_weights, heldout_metrics, percentile_interval
from lens_pivotal.probes.scoring import LayerChoice, ProbeRecorder, TokenScores, recording, score_text
from lens_pivotal.probes.training import Heads, balanced_weights, fit_adam, fit_lbfgs, head_losses

FORMAT = "lens_pivotal.layer_probes/2"
FLAT_FORMAT = "lens_pivotal.layer_probes/1"  # the first format: one flat object; still read
CONFIGURATION_FIELDS = ("model_name", "model_source", "d_model", "n_model_layers", "hook_names", "settings")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "probes.safetensors"
SOLVERS = ("lbfgs", "adam")
CV_PATIENCE = 2  # grid steps past every layer's best CV loss before the L2 path stops
UNCERTAINTY_BASELINES = ("entropy", "top1_prob")  # the model's own uncertainty, which a probe must add to


@dataclass(frozen=True)
class ProbeSettings:
    """How probes are trained and evaluated (saved with them).

    ``l2=None`` picks each layer's L2 from ``l2_grid`` by grouped ``cv_folds``-fold cross-validation on the training
    groups (lowest held-out log loss; ``cv_loss`` in the config, ``None`` where the path stopped early); with
    ``solver="adam"`` it means no penalty. ``val_fraction`` of the groups
    is held out for the reported metrics; with Adam the same fraction of the training groups chooses the best epoch.
    Training runs in ``dtype``, by default float64 for L-BFGS (float32's rounding of the summed objective stops its
    line search short of scikit-learn's optimum) and float32 for Adam.
    """

    solver: Literal["lbfgs", "adam"] = "lbfgs"
    l2: float | None = None
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    cv_folds: int = 5
    standardize: bool = True
    class_weight: Literal["balanced"] | None = "balanced"
    val_fraction: float = 0.2
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 32
    max_iter: int = 500
    n_bootstrap: int = 1000
    n_permutations: int = 19
    seed: int = 0
    dtype: Literal["float32", "float64"] | None = None

    def __post_init__(self) -> None:
        for name, kind in (("l2_grid", tuple), ("standardize", bool)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        for name in ("cv_folds", "epochs", "batch_size", "max_iter", "n_bootstrap", "n_permutations", "seed"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise TypeError(f"{name} must be an int, got {getattr(self, name)!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if self.l2 is not None and self.l2 < 0 or any(value < 0 for value in self.l2_grid) or not self.l2_grid:
            raise ValueError(f"l2 and l2_grid must be non-negative (got l2={self.l2!r}, l2_grid={self.l2_grid!r})")
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.dtype is None:
            object.__setattr__(self, "dtype", "float64" if self.solver == "lbfgs" else "float32")
        for name in ("cv_folds", "epochs", "batch_size", "max_iter"):
            if getattr(self, name) < (2 if name == "cv_folds" else 1):
                raise ValueError(f"{name} must be positive (cv_folds at least 2), got {getattr(self, name)}")


# Plain Adam on raw activations, 10 epochs of batch 32, best epoch per layer on validation: the probe recipe of the
# Algoverse probing project (stvngo/Algoverse-AI-Model-Probing).
ADAM_PROBE_SETTINGS = ProbeSettings(
    solver="adam", l2=0.0, lr=1e-3, epochs=10, batch_size=32, standardize=False, class_weight=None
)


@dataclass
class ProbeConfig:
    """Everything saved beside the weights: the configuration (base model, layers read, settings) and the results
    (metrics, chosen L2, control, best layer), kept apart in ``config.json`` as ``{"format", "config", "results"}``.

    ``model_source`` is how to load the base model again (a hub id, a directory, or ``"embedded"``), when known.
    """

    model_name: str
    d_model: int
    n_model_layers: int
    hook_names: list[str]
    settings: ProbeSettings = field(default_factory=ProbeSettings)
    best_layer: int | None = None
    metrics: dict[str, Any] | None = None
    control_task_auroc: list[float] | None = None
    permutation_p: list[float] | None = None
    l2: list[float] | None = None
    cv_loss: list[list[float]] | None = None
    n_train: int = 0
    n_heldout: int = 0
    heldout_groups: list[str] = field(default_factory=list)
    cv_auroc: list[float] | None = None
    best_heldout_layer: int | None = None
    baseline_metrics: dict[str, dict[str, float]] | None = None
    versus_best_baseline: dict[str, Any] | None = None
    with_uncertainty: dict[str, Any] | None = None
    calibration: dict[str, list[list[float]]] | None = None
    model_source: str = ""
    format: str = FORMAT

    def for_layer(self, index: int) -> ProbeConfig:
        """This config cut down to probed layer ``index`` (its hook, L2, CV losses, control and metrics)."""

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[index]]

        metrics = None
        if self.metrics is not None:
            metrics = {name: {part: pick(parts[part]) for part in parts} for name, parts in self.metrics.items()}
        return replace(
            self, hook_names=[self.hook_names[index]], l2=pick(self.l2), cv_loss=pick(self.cv_loss),
            control_task_auroc=pick(self.control_task_auroc), permutation_p=pick(self.permutation_p),
            calibration=_pick_parts(self.calibration, pick),
            cv_auroc=pick(self.cv_auroc), metrics=metrics,
            best_layer=None if self.best_layer is None else 0,
            best_heldout_layer=None if self.best_heldout_layer is None else 0,
            versus_best_baseline=_pick_parts(self.versus_best_baseline, pick), with_uncertainty=_pick_parts(self.with_uncertainty, pick),
        )  # fmt: skip

    def to_json(self) -> str:
        """``{"format", "config": {model, layers, settings}, "results": {metrics, l2, ...}}`` as JSON."""
        flat = asdict(self)
        del flat["format"]
        configuration = {name: flat.pop(name) for name in CONFIGURATION_FIELDS}
        return json.dumps({"format": FORMAT, "config": configuration, "results": flat}, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> ProbeConfig:
        """Parse :meth:`to_json`'s output (or the first, flat format); ``where`` names the file in errors."""
        data = json.loads(text)
        if data.get("format") not in (FORMAT, FLAT_FORMAT):
            raise ValueError(f"{where}: not a lens_pivotal probe config (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.pop("format") == FORMAT:
            parts = _known_fields(("config", "results"), data, where)
            data = {**parts.get("config", {}), **parts.get("results", {})}
        settings = _known_fields([item.name for item in fields(ProbeSettings)], data.pop("settings"), f"{where} settings")
        settings["l2_grid"] = tuple(settings["l2_grid"])
        return cls(settings=ProbeSettings(**settings), **_known_fields([item.name for item in fields(cls)], data, where))


def _pick_parts(record: dict[str, Any] | None, pick: Callable[[list], list]) -> dict[str, Any] | None:
    """``record`` with every per-layer list cut down by ``pick`` (nested records too; other values kept)."""
    if record is None:
        return None
    return {
        key: pick(value) if isinstance(value, list) else _pick_parts(value, pick) if isinstance(value, dict) else value
        for key, value in record.items()
    }


def _known_fields(known: Sequence[str], data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` without the keys not in ``known`` (a newer version wrote them), with a warning naming them."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        warnings.warn(f"{where}: ignoring keys this version does not know: {', '.join(unknown)}", stacklevel=3)
    return {key: value for key, value in data.items() if key in known}


class LayerProbes(ModelBound):
    """One logistic probe per layer of a ``[n_layers, n_rows, d_model]`` activation tensor.

    Build with :meth:`from_model` (or :func:`train_probes`), then ``fit``; ``predict_proba`` gives
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
        config = ProbeConfig(model.cfg.model_name, model.cfg.d_model, n_model_layers, hook_names, _settings(settings))
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
        """Held-out metrics of each baseline given to :func:`train_probes` (``{}`` without any), scored on the same
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
        the probe reads beyond memorising the current token's type. Needs ``control_types`` in :func:`train_probes`."""
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
        or evaluated here: :func:`train_probes` splits off held-out groups, trains the controls and reports
        metrics; :func:`evaluate_probes` scores fitted probes on any rows.

        Args:
            acts: activations from :func:`lens_pivotal.cache_resid_post` (``[n_layers, n_rows, d_model]``), on
                the device to train on.
            labels: 1 where the next token is pivotal, else 0, per row.
            groups: each row's problem (e.g. ``ProbeExamples.groups``): cross-validation folds never split one.
                Without groups every row is its own group, which leaks when rows of one problem are correlated.
        """
        x, y, groups = self._check_training_data(acts, labels, groups)
        self._train(x, y.unsqueeze(0), groups)
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

    def _train(self, x: Tensor, labels: Tensor, groups: list[str]) -> Heads:
        """Standardise on ``x``, choose each layer's L2 on ``labels[0]``, train a head per row of ``labels``
        (``[n_heads, n_rows]``, the same L2) and keep the first as the probes; returns every head."""
        self._clear_results()
        self._fit_standardization(x.to(getattr(torch, self.config.settings.dtype)))
        x = self._prepared(x)
        l2 = self._choose_l2(x, labels[0], groups)
        heads = self._fit_heads(x, labels, groups, l2.unsqueeze(-1).expand(-1, len(labels)))
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

    def threshold_at_fpr(self, rate: float, layer: Layer | None = None) -> float:
        """The score threshold that lets through at most ``rate`` of the held-out negatives at ``layer`` (default:
        the best layer); see :mod:`lens_pivotal.probes.calibration`."""
        return threshold_at_fpr(self, rate, layer)

    def operating_point(self, threshold: Threshold, layer: Layer | None = None, prior: float | None = None) -> dict[str, float]:
        """A threshold's held-out false-positive rate, recall and precision at ``prior`` (default: the held-out
        rows' share of pivots); see :func:`lens_pivotal.probes.calibration.operating_point`."""
        return operating_point(self, threshold, layer, prior)

    def predict(self, acts: Float[Tensor, "n_layers n_rows d_model"]) -> Float[Tensor, "n_layers n_rows"]:
        """1 where :meth:`predict_proba` is at least 0.5, else 0."""
        return (self.predict_proba(acts) >= 0.5).long()

    def score(self, acts: Float[Tensor, "n_layers n_rows d_model"], labels: Sequence[int] | Tensor) -> Float[Tensor, " n_layers"]:
        """AUROC of each layer's probe on ``acts`` against ``labels``."""
        scores = self.predict_proba(acts).double().cpu()
        y = _as_labels(labels, scores.shape[1])
        return auroc(scores, y.double(), torch.ones(1, len(y), dtype=torch.float64))[:, 0].float()

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

    def score_text(self, model: Any, text: str | Sequence[int] | Tensor, layer: LayerChoice = None) -> TokenScores:
        """Per-token probability that the NEXT token is pivotal; see :func:`lens_pivotal.probes.scoring.score_text`."""
        return score_text(self, model, text, layer)

    def hook(self, layer: Layer | None = None) -> ProbeRecorder:
        """A TransformerLens hook recording the scores of ``layer``'s probe (a block or a hook name; default: the
        best layer) during any forward pass or ``generate``; see :class:`lens_pivotal.probes.scoring.ProbeRecorder`."""
        return ProbeRecorder(self, self.best_layer if layer is None else layer)

    def recording(
        self, model: Any, layer: Layer | None = None, on_score: Callable[[Tensor], object] | None = None
    ) -> ContextManager[ProbeRecorder]:
        """Context manager attaching :meth:`hook` to ``model`` and yielding the recorder; always detached after.
        ``on_score`` is called with the last position's scores after each forward pass."""
        return recording(self, model, layer, on_score)

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
        _require_layered(acts)
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

    def _check_training_data(self, acts: Tensor, labels: Any, groups: Sequence[str] | None) -> tuple[Tensor, Tensor, list[str]]:
        x = self._check_acts(acts)
        y = _as_labels(labels, x.shape[1]).to(x)
        if y.sum() == 0 or y.sum() == len(y):
            raise ValueError("labels hold a single class: probes need both pivotal (1) and other (0) rows")
        if groups is None:
            groups = [str(i) for i in range(len(y))]
        if isinstance(groups, (str, bytes)) or len(groups) != len(y):
            raise ValueError(f"groups must give one group per row: {len(y)} rows, got {len(groups)} groups")
        return x, y, [str(group) for group in groups]

    def _fit_standardization(self, x: Tensor) -> None:
        if self.config.settings.standardize:
            self.mean = x.mean(dim=1).float().cpu()
            self.scale = x.std(dim=1).clamp_min(1e-6).float().cpu()
        else:
            self.mean = torch.zeros(self.n_layers, self.config.d_model)
            self.scale = torch.ones(self.n_layers, self.config.d_model)

    def _standardized(self, x: Tensor, layers: Tensor | slice = slice(None)) -> Tensor:
        """``x`` (``[n_chosen, n_rows, d_model]``, read by the probes of ``layers``) in the probes' normalised units."""
        return (x - self.mean[layers].to(x).unsqueeze(1)) / self.scale[layers].to(x).unsqueeze(1)

    def _prepared(self, x: Tensor) -> Tensor:
        """``x`` in the training dtype and, with ``standardize``, the probes' normalised units."""
        x = x.to(getattr(torch, self.config.settings.dtype))
        return self._standardized(x) if self.config.settings.standardize else x

    def _weights(self, labels: Tensor, mask: Tensor) -> Tensor:
        return balanced_weights(labels, mask) if self.config.settings.class_weight == "balanced" else mask

    def _fit_heads(self, x: Tensor, labels: Tensor, groups: list[str], l2: Tensor, mask: Tensor | None = None) -> Heads:
        """Heads for each row of ``labels`` (``[n_heads, n]``) on every layer, with ``l2 [n_layers, n_heads]``, each
        head fitted on the rows its row of ``mask`` (``[n_heads, n]`` of 0/1, default all) keeps."""
        settings = self.config.settings
        mask = torch.ones_like(labels) if mask is None else mask
        if settings.solver == "lbfgs":
            return fit_lbfgs(x, labels, self._weights(labels, mask), l2, max_iter=settings.max_iter)
        fit_rows, check_rows = group_split(groups, test_fraction=settings.val_fraction, seed=settings.seed + 1)
        fit_labels, check_labels = labels[:, fit_rows], labels[:, check_rows]
        validation = (x[:, check_rows], check_labels, self._weights(check_labels, mask[:, check_rows]))
        return fit_adam(
            x[:, fit_rows], fit_labels, self._weights(fit_labels, mask[:, fit_rows]), l2, validation,
            lr=settings.lr, epochs=settings.epochs, batch_size=settings.batch_size, seed=settings.seed,
        )

    def _out_of_fold_logits(self, x: Tensor, y: Tensor, groups: list[str]) -> Float[Tensor, "n_layers n"] | None:
        """Every row's logit from heads fitted (with the chosen L2) on the other grouped cross-validation folds, per
        layer (``x`` prepared); ``None`` with fewer than 2 groups."""
        if len(set(groups)) < 2:
            return None
        folds = group_folds(groups, self.config.settings.cv_folds, self.config.settings.seed, y.cpu()).to(x.device)
        n_folds = int(folds.max()) + 1
        outside = (folds.unsqueeze(0) != torch.arange(n_folds, device=x.device).unsqueeze(1)).to(x.dtype)  # [folds, n]
        labels = y.to(x.dtype).unsqueeze(0).expand(n_folds, -1)
        l2 = torch.tensor(self.config.l2, dtype=x.dtype, device=x.device).unsqueeze(-1).expand(-1, n_folds)
        heads = self._fit_heads(x, labels, groups, l2, mask=outside)
        logits = heads.logits(x)  # [n_layers, n_folds, n]
        return logits.gather(1, folds.view(1, 1, -1).expand(len(logits), 1, -1)).squeeze(1)

    def _choose_l2(self, x: Tensor, y: Tensor, groups: list[str]) -> Float[Tensor, " n_layers"]:
        """Each layer's L2: the fixed one, or the grid value with the lowest grouped-CV held-out log loss."""
        settings = self.config.settings
        if settings.l2 is not None or settings.solver == "adam":
            self.config.cv_loss = None
            return torch.full((self.n_layers,), settings.l2 or 0.0).to(x)
        if len(set(groups)) < 2:
            raise ValueError("choosing l2 by grouped cross-validation needs at least 2 training groups; pass l2=...")
        folds = group_folds(groups, settings.cv_folds, settings.seed, y.cpu()).to(x.device)
        n_folds = int(folds.max()) + 1
        outside = (folds.unsqueeze(0) != torch.arange(n_folds, device=x.device).unsqueeze(1)).to(x.dtype)  # [folds, n]
        labels = y.unsqueeze(0).expand(n_folds, -1)
        fit_weights, check_weights = self._weights(labels, outside), self._weights(labels, 1 - outside)
        # Along the L2 path from the strongest penalty: each solve has heads of like curvature and starts close by.
        # Weak penalties are the slow solves (n < d_model makes the data separable), so the path stops once every
        # layer's CV loss has risen for CV_PATIENCE steps past its minimum.
        heads, cv_loss = None, {}
        for l2 in sorted(settings.l2_grid, reverse=True):
            penalty = torch.tensor(l2, dtype=torch.float64).to(x)
            heads = fit_lbfgs(x, labels, fit_weights, penalty, max_iter=settings.max_iter, init=heads)
            cv_loss[l2] = head_losses(heads, x, labels, check_weights, torch.zeros(1).to(x)).mean(-1)
            path = torch.stack(list(cv_loss.values()), dim=-1)
            if path.shape[-1] > CV_PATIENCE and bool((path.argmin(-1) < path.shape[-1] - CV_PATIENCE).all()):
                break
        missing = torch.full((self.n_layers,), float("inf")).to(x)
        table = torch.stack([cv_loss.get(l2, missing) for l2 in settings.l2_grid], dim=-1)  # [n_layers, n_grid]
        self.config.cv_loss = [[value if value != float("inf") else None for value in row] for row in table.tolist()]
        return torch.tensor(settings.l2_grid, dtype=torch.float64).to(x)[table.argmin(-1)]

    def _record_results(
        self, metrics: LayerMetrics, controls: dict[str, list[float] | None], groups: list[str], n_train: int,
        cv_auroc: Tensor | None,
    ) -> None:
        heldout_best = int(torch.nan_to_num(metrics.values["auroc"], nan=-1).argmax())
        if cv_auroc is None:
            warnings.warn(
                "fewer than 2 training problems: the best layer is the one with the best held-out AUROC, whose "
                "held-out numbers are then optimistic", stacklevel=3,
            )  # fmt: skip
        self.config = replace(
            self.config,
            metrics=metrics.to_dict(),
            **controls,
            cv_auroc=None if cv_auroc is None else [float(value) for value in cv_auroc],
            best_layer=heldout_best if cv_auroc is None else int(torch.nan_to_num(cv_auroc, nan=-1).argmax()),
            best_heldout_layer=heldout_best,
            n_train=n_train,
            n_heldout=len(groups),
            heldout_groups=sorted(set(groups)),
        )


def train_probes(
    acts: Float[Tensor, "n_layers n_rows d_model"],
    labels: Sequence[int] | Tensor,
    *,
    groups: Sequence[str] | None = None,
    model: Any | None = None,
    layers: Sequence[int] | None = None,
    embeddings: bool = False,
    settings: ProbeSettings | None = None,
    baselines: dict[str, Tensor] | None = None,
    heldout_groups: Collection[str] | None = None,
    control_types: Sequence[int] | None = None,
) -> LayerProbes:
    """Train one probe per layer of ``acts`` (all layers at once) and evaluate them on held-out groups.

    Args:
        acts: ``[n_layers, n_rows, d_model]`` from ``cache_resid_post`` / ``ProbeExamples.cache``; train on GPU by
            passing CUDA activations.
        labels: 1 where the next token is pivotal, else 0.
        groups: the problem of each row; splits never put one problem on both sides.
        model: the model ``acts`` came from: recorded in the config (model name, shape) so that
            :meth:`LayerProbes.load` can catch a mismatch.
        layers, embeddings: as given to the cache call (with or without ``model``): the blocks ``acts`` holds, in
            order, so every later ``layer=`` names the block it means.
        settings: how to train and evaluate, e.g. ``ProbeSettings(l2=1e-2, val_fraction=0.2)`` (default:
            ``ProbeSettings()``); ``ADAM_PROBE_SETTINGS`` reproduces the Algoverse probing project's probe.
        baselines: per-row scores a probe must beat (``ProbeExamples.baselines(model)``: entropy, top-1
            probability, position, token), each fitted and oriented on the training groups and scored on the held-out
            ones like the probes (:attr:`LayerProbes.baseline_metrics`, :attr:`LayerProbes.versus_best_baseline`,
            :attr:`LayerProbes.with_uncertainty`).
        heldout_groups: the problems to hold out (e.g. another problem family's, to measure transfer); default: a
            seeded ``settings.val_fraction`` of them.
        control_types: each row's current-token id (``ProbeExamples.current_tokens``): trains Hewitt & Liang's
            control task (:mod:`lens_pivotal.probes.controls`), which :attr:`LayerProbes.selectivity` needs.

    Returns:
        :class:`LayerProbes` fitted on the training groups (:meth:`LayerProbes.fit`), with per-layer metrics on the
        held-out groups (:func:`evaluate_probes`), the control task (with ``control_types``) and the permutation null
        trained on the same rows, and the best layer.
    """
    _require_layered(acts)
    if model is not None:
        probes = LayerProbes.from_model(model, layers=layers, embeddings=embeddings, settings=settings)
    else:
        n_model_layers, hook_names = read_hooks(None, layers, embeddings, n_slots=acts.shape[0])
        probes = LayerProbes(ProbeConfig(UNKNOWN_MODEL, acts.shape[2], n_model_layers, hook_names, _settings(settings)))
    x, y, groups = probes._check_training_data(acts, labels, groups)
    chosen = probes.config.settings
    if heldout_groups is None:
        train, heldout = group_split(groups, test_fraction=chosen.val_fraction, seed=chosen.seed)
    else:
        train, heldout = _split_off(groups, heldout_groups)
    train_groups, heldout_groups = [groups[i] for i in train], [groups[i] for i in heldout]
    # The control task and the permutation null train beside the probes, as more heads of the same batched program.
    control = None
    if control_types is not None:
        control = control_task_labels(_check_types(control_types, len(y)), float(y[train].mean()), chosen.seed,
                                      both_classes_in=train).to(y)  # fmt: skip
    permuted = permutation_labels(y[train], chosen.n_permutations, chosen.seed)
    heads = probes._train(x[:, train], torch.cat([y[train][None], *([] if control is None else [control[train][None]]), permuted]),
                          train_groups)  # fmt: skip
    heldout_logits = heads.logits(probes._prepared(x[:, heldout])).cpu()
    scores = torch.sigmoid(heldout_logits)
    y_heldout = y[heldout].cpu()
    metrics = heldout_metrics(scores[:, 0], y_heldout, heldout_groups, n_bootstrap=chosen.n_bootstrap, seed=chosen.seed)
    controls = _control_results(scores, y_heldout, None if control is None else control[heldout].cpu(), metrics)
    out_of_fold = probes._out_of_fold_logits(probes._prepared(x[:, train]), y[train], train_groups)
    cv_auroc = None if out_of_fold is None else _auroc_per_row(out_of_fold.cpu(), y[train].cpu())
    probes._record_results(metrics, controls, heldout_groups, len(train), cv_auroc)
    gate_scores = probes.predict_proba(acts[:, heldout]).cpu()  # as a gate or a recorder computes them
    probes.config.calibration = {
        name: [sorted(row) for row in gate_scores[:, y_heldout == label].tolist()]
        for name, label in (("negative_scores", 0), ("positive_scores", 1))
    }
    if baselines:
        split = (torch.as_tensor(train), torch.as_tensor(heldout))
        probe_logits = torch.zeros(probes.n_layers, len(y), dtype=torch.float64)
        probe_logits[:, split[1]] = heldout_logits[:, 0].double()
        if out_of_fold is not None:
            probe_logits[:, split[0]] = out_of_fold.cpu().double()
        _evaluate_baselines(probes, baselines, y.cpu(), split, heldout_groups, probe_logits, out_of_fold is not None)
    return probes


def _check_types(types: Sequence[int], n_rows: int) -> list[int]:
    if len(types) != n_rows:
        raise ValueError(f"control_types must give one token type per row: {n_rows} rows, got {len(types)}")
    return [int(value) for value in types]


def _control_results(
    scores: Float[Tensor, "n_layers n_heads n"], y: Tensor, control: Tensor | None, metrics: LayerMetrics
) -> dict[str, list[float] | None]:
    """The control task's held-out AUROC against its own labels (head 1, when there is one) and the permutation
    p-value of the task's AUROC (the last heads), per layer."""
    first_null = 1 if control is None else 2
    n_layers, n_permutations = scores.shape[0], scores.shape[1] - first_null
    null = _auroc_per_row(scores[:, first_null:].reshape(-1, scores.shape[-1]), y).view(n_layers, n_permutations)
    return {
        "control_task_auroc": None if control is None else _auroc_per_row(scores[:, 1], control).tolist(),
        "permutation_p": permutation_p_values(metrics.values["auroc"].double(), null).tolist() if n_permutations else None,
    }


def _split_off(groups: list[str], heldout_groups: Collection[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, heldout)``: the rows of ``heldout_groups`` and the others."""
    heldout_groups = set(heldout_groups)
    if not heldout_groups:
        raise ValueError("heldout_groups is empty: name at least one group to hold out")
    unknown = sorted(heldout_groups - set(groups))
    if unknown:
        raise ValueError(f"heldout_groups names {len(unknown)} groups not in groups, e.g. {unknown[0]!r}")
    is_heldout = np.array([group in heldout_groups for group in groups])
    if is_heldout.all():
        raise ValueError("heldout_groups must leave at least one group for training")
    return np.flatnonzero(~is_heldout), np.flatnonzero(is_heldout)


def _auroc_per_row(scores: Float[Tensor, "k n"], y: Tensor) -> Float[Tensor, " k"]:
    return auroc(scores.double(), y.double(), torch.ones(1, len(y), dtype=torch.float64))[:, 0]


def _evaluate_baselines(
    probes: LayerProbes,
    baselines: dict[str, Tensor],
    y: Tensor,
    split: tuple[Tensor, Tensor],
    held_groups: list[str],
    probe_logits: Float[Tensor, "n_layers n"],
    combine: bool,
) -> None:
    """Score each baseline on the held-out groups and compare the probes with the best one, and (with ``combine``
    and an uncertainty baseline) the probe + uncertainty combination with the uncertainty baselines alone, paired
    over the same bootstrap resamples of the held-out groups. ``probe_logits`` holds the held-out rows' logits and, on the training rows,
    out-of-fold logits (the combination is fitted there on logits the probe did not train on)."""
    settings, (train, heldout) = probes.config.settings, split
    check_baselines(baselines, len(y))
    balanced = settings.class_weight == "balanced"
    probabilities = fit_baselines({name: values.cpu() for name, values in baselines.items()}, y, train, balanced=balanced)
    probabilities, y_held = probabilities[:, heldout], y[heldout].double()
    result = heldout_metrics(probabilities, y_held, held_groups, n_bootstrap=settings.n_bootstrap, seed=settings.seed)
    names = list(baselines)
    probes.config.baseline_metrics = {
        name: {
            **{metric: float(result.values[metric][index]) for metric in result.values},
            **{f"{metric}_low": float(result.low[metric][index]) for metric in result.values},
            **{f"{metric}_high": float(result.high[metric][index]) for metric in result.values},
        }
        for index, name in enumerate(names)
    }
    best = int(result.values["auroc"].argmax())
    compare = partial(_paired_auroc_difference, y=y_held, groups=held_groups, settings=settings, confidence=result.confidence)
    probes.config.versus_best_baseline = {
        "baseline": names[best], **compare(probe_logits[:, heldout], probabilities[best])
    }
    uncertainty = [name for name in UNCERTAINTY_BASELINES if name in baselines]
    if combine and uncertainty:
        probes.config.with_uncertainty = _with_uncertainty(
            [baselines[name].cpu().double() for name in uncertainty], probe_logits, y, split, held_groups, settings, compare
        ) | {"features": uncertainty}


def _with_uncertainty(
    uncertainty: list[Tensor], probe_logits: Float[Tensor, "n_layers n"], y: Tensor, split: tuple[Tensor, Tensor],
    held_groups: list[str], settings: ProbeSettings, compare: Callable[..., dict[str, list[float]]],
) -> dict[str, Any]:
    """Held-out AUROC of each layer's probe logit beside the ``uncertainty`` features, of those features alone, and
    the paired difference (each combination a logistic regression fitted on the training rows)."""
    (train, heldout), balanced = split, settings.class_weight == "balanced"
    alone_features = torch.stack(uncertainty, dim=-1).unsqueeze(0)
    alone = fit_logistic(alone_features, y, train, balanced=balanced)[:, heldout]
    features = torch.cat([probe_logits.unsqueeze(-1), alone_features.expand(len(probe_logits), -1, -1)], dim=-1)
    combined = fit_logistic(features, y, train, balanced=balanced)[:, heldout]
    scored = heldout_metrics(torch.cat([combined, alone]), y[heldout].double(), held_groups,
                             n_bootstrap=settings.n_bootstrap, seed=settings.seed)  # fmt: skip
    auroc, low, high = (part["auroc"].tolist() for part in (scored.values, scored.low, scored.high))
    return {
        "auroc": auroc[:-1], "auroc_low": low[:-1], "auroc_high": high[:-1],
        "uncertainty_auroc": auroc[-1], "uncertainty_auroc_low": low[-1], "uncertainty_auroc_high": high[-1],
        "minus_uncertainty": compare(combined, alone[0]),
    }  # fmt: skip


def _paired_auroc_difference(
    scores: Float[Tensor, "k n"], reference: Float[Tensor, " n"], *, y: Tensor, groups: list[str],
    settings: ProbeSettings, confidence: float,
) -> dict[str, list[float]]:
    """AUROC of each row of ``scores`` minus ``reference``'s, with an interval over the same bootstrap resamples of
    the groups: ``{"value", "low", "high"}``."""
    compared = torch.cat([scores.double(), reference.double().unsqueeze(0)])
    value = _auroc_per_row(compared, y)
    resampled = group_bootstrap_weights(groups, settings.n_bootstrap, settings.seed).double()
    draws = auroc(compared, y, resampled) if settings.n_bootstrap else torch.full((len(compared), 1), float("nan"))
    low, high = percentile_interval(draws[:-1] - draws[-1:], confidence)
    return {"value": (value[:-1] - value[-1]).tolist(), "low": low.tolist(), "high": high.tolist()}


def evaluate_probes(
    probes: LayerProbes,
    acts: Float[Tensor, "n_layers n_rows d_model"],
    labels: Sequence[int] | Tensor,
    groups: Sequence[str] | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> LayerMetrics:
    """Accuracy, balanced accuracy, F1, AUROC and AUPRC of fitted ``probes`` on these rows, per layer, with bootstrap
    intervals over ``groups`` (rows, without groups)."""
    scores = probes.predict_proba(acts).cpu()
    return heldout_metrics(scores, _as_labels(labels, scores.shape[1]), groups, n_bootstrap=n_bootstrap, seed=seed)


def _settings(settings: ProbeSettings | None) -> ProbeSettings:
    if settings is None:
        return ProbeSettings()
    if not isinstance(settings, ProbeSettings):
        raise TypeError(f"settings must be a ProbeSettings, e.g. ProbeSettings(l2=1.0), got {type(settings).__name__}")
    return settings


def _require_layered(acts: Any) -> None:
    if not isinstance(acts, Tensor) or acts.ndim != 3:
        raise ValueError(f"acts must be a [n_layers, n_rows, d_model] tensor, got {getattr(acts, 'shape', type(acts))}")


def _as_labels(labels: Any, n_rows: int) -> Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).float().flatten()
    if len(y) != n_rows:
        raise ValueError(f"labels has {len(y)} entries but acts has {n_rows} rows")
    if not torch.all((y == 0) | (y == 1)):
        bad = int(torch.nonzero((y != 0) & (y != 1))[0])
        raise ValueError(f"labels must be 0 or 1; row {bad} is {y[bad].item()!r}")
    return y
