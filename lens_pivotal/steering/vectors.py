"""Steering directions from PTS data: per layer, the residual-stream direction of pivotal states.

``mean_difference``: the mean ``resid_post`` of pivotal states (positives of the chosen ``prob_delta`` sign) minus
the mean of the other answer states. ``probe``: a trained probe's weight in residual-stream units (its
standardisation undone), pointing toward "the next token is pivotal". Saved like probes: safetensors beside a JSON
config that names the base model, checked against a model on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from lens_pivotal._io import atomic_dir
from lens_pivotal.model import UNKNOWN_MODEL, Layer, ModelBound, layer_label, read_hooks
from lens_pivotal.probes.examples import ProbeExamples
from lens_pivotal.probes.layer_probes import LayerProbes

FORMAT = "lens_pivotal.steering_vectors/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "vectors.safetensors"
METHODS = ("mean_difference", "probe")
SIGNS = ("positive", "negative", "any")
Sign = Literal["positive", "negative", "any"]


@dataclass
class SteeringConfig:
    """What the vectors were made from: the base model and its shape, the hooks they belong to, the method, which
    pivots (``sign`` of ``prob_delta``) and how many states on each side, each layer's mean residual norm (the
    unit a relative ``alpha`` is measured in), and the problems they were built from (never evaluate on those)."""

    model_name: str
    d_model: int
    n_model_layers: int
    hook_names: list[str]
    method: str
    sign: str
    n_pivotal: int
    n_other: int
    residual_norm: list[float]
    groups: list[str] = field(default_factory=list)
    model_source: str = ""
    format: str = FORMAT


class SteeringVectors(ModelBound):
    """One steering vector per layer, ``vectors [n_layers, d_model]`` in residual-stream units, for the hooks
    ``config.hook_names`` (``blocks.{l}.hook_resid_post``); :func:`~lens_pivotal.steering.steering_hook` applies one."""

    _what = "these vectors"

    def __init__(self, vectors: Float[Tensor, "n_layers d_model"], config: SteeringConfig) -> None:
        if vectors.shape != (len(config.hook_names), config.d_model):
            raise ValueError(f"vectors must be [{len(config.hook_names)}, {config.d_model}], got {tuple(vectors.shape)}")
        self.vectors = vectors.float()
        self.config = config

    @property
    def n_layers(self) -> int:
        """How many layers have a vector."""
        return len(self.config.hook_names)

    @property
    def layer_labels(self) -> list[str]:
        """Block number of each layer (``"emb"`` for the embedding stream)."""
        return [layer_label(name) for name in self.config.hook_names]

    def unit(self, layer: Layer) -> Float[Tensor, " d_model"]:
        """The vector of ``layer`` (a block or a hook name) scaled to unit norm."""
        vector = self.vectors[self.slot(layer)]
        return vector / vector.norm().clamp_min(1e-12)

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``vectors.safetensors`` and ``config.json`` to ``directory`` (atomically: all or nothing).

        Raises:
            FileExistsError: ``directory`` exists and is not empty, unless ``overwrite`` (which replaces it whole).
        """
        with atomic_dir(directory, overwrite=overwrite) as scratch:
            save_file({"vectors": self.vectors.contiguous()}, scratch / WEIGHTS_FILE)
            (scratch / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any | None = None) -> SteeringVectors:
        """Vectors saved by :meth:`save`; with ``model``, check that they were made from a model of its shape.

        Raises:
            FileNotFoundError: the directory or one of its two files is missing.
            ValueError: not a steering-vector config, or the files disagree, or ``model`` has another shape.
        """
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} holds no {name}: not a directory written by SteeringVectors.save")
        data = json.loads((directory / CONFIG_FILE).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{directory / CONFIG_FILE}: not lens_pivotal steering vectors (format {data.get('format')!r})")
        vectors = cls(load_file(directory / WEIGHTS_FILE)["vectors"], SteeringConfig(**data))
        if model is not None:
            vectors._check_loaded(model)
        return vectors

    def __repr__(self) -> str:
        config = self.config
        return (f"SteeringVectors({config.method}, {config.sign} pivots, {self.n_layers} layers of {config.model_name}; "
                f"{config.n_pivotal} pivotal vs {config.n_other} other states)")


def steering_vectors(
    acts: Float[Tensor, "n_layers n_examples d_model"],
    examples: ProbeExamples,
    *,
    method: Literal["mean_difference", "probe"] = "mean_difference",
    sign: Sign | None = None,
    probes: LayerProbes | None = None,
    model: Any | None = None,
    layers: Sequence[int] | None = None,
    embeddings: bool = False,
) -> SteeringVectors:
    """Per layer, the direction of pivotal states in ``acts`` (``examples.cache(model, layers=..., embeddings=...)``).

    Args:
        method: ``"mean_difference"`` (mean of the pivotal states minus mean of the other answer states) or
            ``"probe"`` (``probes``' weights in residual units; the probes must read the same layers as ``acts``).
        sign: which pivots count as pivotal: ``"positive"`` (``prob_delta > 0``, toward success; the default for
            mean differences), ``"negative"`` (away from it), or ``"any"`` (the probe's own classes: its only choice).
        model, layers, embeddings: as given to the cache call, so the vectors know their base model and the block
            of each layer (``layers`` is used with or without ``model``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sign = sign or ("positive" if method == "mean_difference" else "any")
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    if acts.ndim != 3 or acts.shape[1] != len(examples):
        raise ValueError(f"acts must be [n_layers, {len(examples)} examples, d_model], got {tuple(acts.shape)}")
    pivotal, other = _sides(examples, sign)
    config = _config(acts, model, layers, embeddings, method, sign, int(pivotal.sum()), int(other.sum()))
    config.groups = sorted(set(examples.groups))
    if method == "probe":
        vectors = _probe_vectors(probes, config, sign)
    else:
        if not pivotal.any() or not other.any():
            raise ValueError(f"no {sign} pivots or no other states among the {len(examples)} examples")
        vectors = acts[:, pivotal].float().mean(dim=1) - acts[:, other].float().mean(dim=1)
    return SteeringVectors(vectors.cpu(), config)


def _sides(examples: ProbeExamples, sign: str) -> tuple[Tensor, Tensor]:
    """Masks of the pivotal states of ``sign`` and of the other (non-pivotal) answer states."""
    deltas = [0.0 if delta is None else delta for delta in examples.prob_deltas]
    labels = torch.tensor(examples.labels, dtype=torch.bool)
    chosen = {"positive": [delta > 0 for delta in deltas], "negative": [delta < 0 for delta in deltas],
              "any": [True] * len(deltas)}[sign]  # fmt: skip
    return labels & torch.tensor(chosen, dtype=torch.bool), ~labels


def _config(acts: Tensor, model: Any | None, layers: Sequence[int] | None, embeddings: bool, method: str, sign: str,
            n_pivotal: int, n_other: int) -> SteeringConfig:  # fmt: skip
    norms = acts.float().norm(dim=-1).mean(dim=1).tolist()
    n_model_layers, hook_names = read_hooks(model, layers, embeddings, n_slots=acts.shape[0])
    model_name, d_model = (UNKNOWN_MODEL, acts.shape[2]) if model is None else (model.cfg.model_name, model.cfg.d_model)
    if d_model != acts.shape[2]:
        raise ValueError(f"acts {tuple(acts.shape)} do not match {model_name}'s d_model {d_model}")
    return SteeringConfig(model_name, d_model, n_model_layers, hook_names, method, sign, n_pivotal, n_other, norms)


def _probe_vectors(probes: LayerProbes | None, config: SteeringConfig, sign: str) -> Tensor:
    if probes is None:
        raise ValueError("method='probe' needs probes=LayerProbes trained on these layers")
    if sign != "any":
        raise ValueError(f"a probe separates pivotal from other states whatever their sign: use sign='any', not {sign!r}")
    if probes.config.hook_names != config.hook_names:
        raise ValueError(f"the probes read {probes.config.hook_names}, the activations {config.hook_names}")
    return torch.stack([probes.residual_direction(layer)[0] for layer in range(probes.n_layers)])
