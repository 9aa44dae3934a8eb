"""Steering as a TransformerLens hook: add a vector to ``resid_post`` at chosen positions, optionally only where a
probe, reading the same residual before the addition, says the next token is likely pivotal.

    hook = lp.steering_hook(vectors, alpha=4.0, layer=12, positions="generated", gate=(probes, 0.5))
    with model.hooks(fwd_hooks=[hook.fwd_hook]):      # beside the package's other hooks and your own
        model.generate(prompt, max_new_tokens=64)     # KV-cached decode steps are steered (and gated) one by one
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.model import Layer, resid_post_hook
from lens_pivotal.positions import SequencePositions
from lens_pivotal.probes.calibration import Threshold
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.steering.vectors import SteeringVectors

Positions = Literal["all", "generated"] | Sequence[int]


class SteeringHook:
    """A hook function ``(resid, hook) -> resid + mask * addition`` for one ``hook_name``.

    ``positions``: ``"all"``; ``"generated"``, the positions that predict each new token (the prompt's last token and
    every generated one); or absolute token indices. Positions are tracked across passes
    (:class:`~lens_pivotal.positions.SequencePositions`), so ``generate`` steers the same positions with and without
    the KV cache. ``gate``: ``(probes, threshold)``, steering only where ``probes``' probe on ``hook_name`` scores
    the unsteered residual at least ``threshold``: a probability, or a
    :class:`~lens_pivotal.probes.calibration.FalsePositiveRate` on the probes' held-out negatives (kept as the score
    it resolves to). Each pass appends its ``[batch, pos]`` steering mask to :attr:`masks`.
    """

    def __init__(
        self,
        hook_name: str,
        addition: Float[Tensor, " d_model"],
        positions: Positions = "all",
        gate: tuple[LayerProbes, Threshold] | None = None,
    ) -> None:
        if isinstance(positions, str) and positions not in ("all", "generated"):
            raise ValueError(f"positions must be 'all', 'generated' or a list of token indices, got {positions!r}")
        self.hook_name = hook_name
        self.addition = addition
        self.positions = positions if isinstance(positions, str) else sorted(set(int(p) for p in positions))
        self.gate = None if gate is None else (gate[0], gate[0].resolve_threshold(gate[1], hook_name))
        self.masks: list[Tensor] = []
        self._sequence = SequencePositions()

    @property
    def fwd_hook(self) -> tuple[str, SteeringHook]:
        """``(hook_name, self)``, ready for ``fwd_hooks=[...]``."""
        return self.hook_name, self

    @property
    def n_steered(self) -> int:
        """How many (batch row, position) states were steered so far."""
        return int(sum(mask.sum() for mask in self.masks))

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any) -> Float[Tensor, "batch pos d_model"]:
        batch, length, d_model = resid.shape
        start = self._sequence.advance(resid)
        mask = self._position_mask(start, length, resid.device).expand(batch, length)
        if self.gate is not None:
            probes, threshold = self.gate
            with torch.no_grad():
                scores = probes.proba_at([self.hook_name], resid.detach().reshape(1, batch * length, d_model)).view(batch, length)
            mask = mask & (scores.to(resid.device) >= threshold)
        self.masks.append(mask.cpu())
        return resid + mask.unsqueeze(-1).to(resid.dtype) * self.addition.to(resid)

    def _position_mask(self, start: int, length: int, device: torch.device) -> Tensor:
        absolute = torch.arange(start, start + length, device=device)
        if self.positions == "all":
            return torch.ones(length, dtype=torch.bool, device=device)
        if self.positions == "generated":
            return absolute >= self._sequence.prompt_length - 1
        return torch.isin(absolute, torch.tensor(self.positions, dtype=torch.long, device=device))

    def reset(self) -> None:
        """Forget the recorded masks and the sequence (before an unrelated sequence of one-token passes)."""
        self.masks.clear()
        self._sequence.reset()


def steering_hook(
    vector: SteeringVectors | Float[Tensor, " d_model"],
    alpha: float,
    *,
    layer: Layer,
    positions: Positions = "all",
    gate: tuple[LayerProbes, Threshold] | None = None,
    absolute: bool = False,
    residual_norm: float | None = None,
) -> SteeringHook:
    """A hook for ``layer`` (block ``l`` means ``blocks.{l}.hook_resid_post``; a hook name is used as given) adding
    ``alpha * unit(vector) * scale``.

    Args:
        vector: :class:`SteeringVectors` (which must hold ``layer``; its mean residual norm there is used) or a raw
            ``[d_model]`` tensor.
        alpha: the step, in units of the layer's mean residual norm (``scale``), or absolute with ``absolute=True``.
        positions: ``"all"``, ``"generated"`` or token indices (see :class:`SteeringHook`).
        gate: ``(probes, threshold)``: steer only where the probe reading this hook scores the unsteered residual at
            least ``threshold`` (steering only where the model is about to choose a pivotal token); ``threshold`` may
            be a :class:`~lens_pivotal.probes.calibration.FalsePositiveRate`.
        residual_norm: the scale for a raw tensor when ``absolute`` is False.
    """
    if isinstance(vector, SteeringVectors):
        index = vector.slot(layer)
        hook_name, unit = vector.config.hook_names[index], vector.unit(layer)
        scale = 1.0 if absolute else vector.config.residual_norm[index]
    else:
        if vector.ndim != 1:
            raise ValueError(f"vector must be [d_model] or SteeringVectors, got shape {tuple(vector.shape)}")
        if not absolute and residual_norm is None:
            raise ValueError("a raw vector needs residual_norm=... (the layer's mean residual norm) or absolute=True")
        hook_name, unit = _raw_vector_hook(layer), vector.float() / vector.float().norm().clamp_min(1e-12)
        scale = 1.0 if absolute else float(residual_norm)
    return SteeringHook(hook_name, alpha * scale * unit, positions, _gate(gate, hook_name))


def _raw_vector_hook(layer: Layer) -> str:
    """The hook a raw vector steers: there is no model to count a negative block from the end of."""
    if isinstance(layer, str):
        return layer
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer for a raw vector must be a non-negative block or a hook name, got {layer!r}")
    return resid_post_hook(layer)


def _gate(gate: tuple[LayerProbes, Threshold] | None, hook_name: str) -> tuple[LayerProbes, Threshold] | None:
    if gate is not None and hook_name not in gate[0].config.hook_names:
        raise ValueError(f"the gate's probes read {gate[0].config.hook_names}, not {hook_name!r}, the steered hook")
    return gate
