"""What probes are trained with and what is saved beside their weights: :class:`ProbeSettings` (typed
hyperparameters) and :class:`ProbeConfig` (base model, layers read, settings, and the results of the last fit),
written as ``config.json`` in a ``{"format", "config", "results"}`` layout."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Literal, Sequence

FORMAT = "lens_pivotal.layer_probes/2"
FLAT_FORMAT = "lens_pivotal.layer_probes/1"  # the first format: one flat object; still read
CONFIGURATION_FIELDS = ("model_name", "model_source", "d_model", "n_model_layers", "hook_names", "settings")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "probes.safetensors"
SOLVERS = ("lbfgs", "adam")


@dataclass(frozen=True)
class ProbeSettings:
    """How probes are trained and evaluated (saved with them).

    ``l2=None`` picks each layer's L2 from ``l2_grid`` by grouped ``cv_folds``-fold cross-validation on the training
    groups (lowest held-out log loss; ``cv_loss`` in the config, ``None`` where the path stopped early); with
    ``solver="adam"`` it means no penalty. ``standardize`` fits the standardisation on the rows each fit sees:
    inside every cross-validation fold, its training rows (:mod:`lens_pivotal.probes.selection`). ``val_fraction`` of the groups
    is held out for the reported metrics; with Adam the same fraction of the training groups chooses the best epoch.
    Training runs in ``dtype``, by default float64 for L-BFGS (float32's rounding of the summed objective stops its
    line search short of scikit-learn's optimum) and float32 for Adam.
    """

    solver: Literal["lbfgs", "adam"] = "lbfgs"
    l2: float | None = None
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
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

    @property
    def chooses_l2(self) -> bool:
        """Whether each layer's L2 is picked from ``l2_grid`` by grouped cross-validation (L-BFGS without ``l2``)."""
        return self.l2 is None and self.solver == "lbfgs"

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
    ``cv_auroc`` is each layer's nested cross-validated AUROC on the training problems (it picks ``best_layer``).
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


def checked_settings(settings: ProbeSettings | None) -> ProbeSettings:
    """``settings``, or the defaults for ``None``; a clear error for anything else."""
    if settings is None:
        return ProbeSettings()
    if not isinstance(settings, ProbeSettings):
        raise TypeError(f"settings must be a ProbeSettings, e.g. ProbeSettings(l2=1.0), got {type(settings).__name__}")
    return settings
