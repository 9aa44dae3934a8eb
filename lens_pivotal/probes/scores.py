"""What scoring text with probes returns: per-token scores of a text (:class:`TokenScores`) and of a generation
(:class:`GeneratedScores`). Views of them are in :mod:`lens_pivotal.probes.views`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from jaxtyping import Float
from torch import Tensor

from lens_pivotal.model import Layer


@dataclass
class TokenScores:
    """Per-token probe scores of one text: ``scores[k, t]`` = P(token ``t + 1`` is pivotal) at ``layers[k]`` (a
    block, or a hook name for the embedding stream; ``layer_labels[k]`` is its short label)."""

    tokens: list[str]
    token_ids: list[int]
    scores: Float[Tensor, "n_layers n_tokens"]
    layers: list[Layer]
    layer_labels: list[str]

    def top(self, k: int = 5, layer: Layer | None = None) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring positions at ``layer`` (a scored block or hook name; default: the first scored):
        ``(position, token, score)``."""
        if layer is not None and layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not scored; these scores hold layers {self.layers}")
        row = self.scores[0 if layer is None else self.layers.index(layer)]
        values, positions = row.topk(min(k, self.scores.shape[1]))
        return [(int(p), self.tokens[int(p)], float(v)) for v, p in zip(values, positions)]


@dataclass
class GeneratedScores:
    """Generated tokens with the probe's score for each, read just before it was generated, and a flag at
    ``score >= threshold``: a likely pivot."""

    prompt_ids: list[int]
    tokens: list[str]
    token_ids: list[int]
    scores: Float[Tensor, " n_new"]
    threshold: float
    layer_label: str

    @property
    def flagged(self) -> Tensor:
        """Boolean mask of generated tokens scored at or above ``threshold``."""
        return self.scores >= self.threshold

    @property
    def text(self) -> str:
        """The generated text (without the prompt)."""
        return "".join(self.tokens)

    def __iter__(self) -> Iterator[tuple[str, float, bool]]:
        return iter(zip(self.tokens, self.scores.tolist(), self.flagged.tolist()))
