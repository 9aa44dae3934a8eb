"""What the attributions return: plain result dataclasses, computed by :mod:`~lens_pivotal.attributions.token_attribution`,
:mod:`~lens_pivotal.attributions.heads` and :mod:`~lens_pivotal.attributions.pivots`, and shown by the functions of
:mod:`~lens_pivotal.attributions.views` and :mod:`~lens_pivotal.attributions.plots`. This module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float
from torch import Tensor

from lens_pivotal.pts.schema import PivotalToken

LARGE_DELTA = 0.05  # |convergence_delta| above this fraction of |target_value - baseline_value| gets a warning


@dataclass
class TokenAttribution:
    """How much each token of a text drives ``target_label`` at ``position`` (``scores[t]``; 0 after ``position``).

    ``target_value`` is the target on the real input. With integrated gradients, ``baseline_value`` is the target at
    the baseline input and ``convergence_delta = scores.sum() - (target_value - baseline_value)``: how far the
    attribution is from complete (0 for an exact one). ``kept_positions`` are the tokens the baseline leaves as they
    are (the ``"pad"`` baseline's first, special and chat-template tokens): their scores are 0 by construction.
    """

    tokens: list[str]
    token_ids: list[int]
    position: int
    method: str
    target_label: str
    scores: Float[Tensor, " n_tokens"]
    target_value: float
    baseline: str
    baseline_value: float | None = None
    convergence_delta: float | None = None
    steps: int | None = None
    kept_positions: list[int] = field(default_factory=list)

    @property
    def relative_delta(self) -> float | None:
        """``|convergence_delta| / |target_value - baseline_value|``: the fraction of the change left unexplained."""
        if self.convergence_delta is None or self.baseline_value is None:
            return None
        return abs(self.convergence_delta) / max(abs(self.target_value - self.baseline_value), 1e-12)

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` tokens with the largest ``|score|``: ``(position, token, score)``, largest first."""
        order = self.scores.abs().argsort(descending=True)[: min(k, len(self.tokens))]
        return [(int(index), self.tokens[int(index)], float(self.scores[index])) for index in order]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (scores as a list)."""
        fields = dict(vars(self))
        fields["scores"] = self.scores.tolist()
        return fields


@dataclass
class HeadAttribution:
    """Direct contributions to ``target_value`` (a linear target, normalisation frozen) at ``position``.

    ``heads[l, h, s]`` is head ``h`` of block ``l`` writing from source token ``s``; ``attention_bias[l]`` and
    ``mlp[l]`` are block ``l``'s attention output bias and MLP; ``embedding`` the token (and position) embedding;
    ``constant`` the target's own offset (the unembedding bias, the probe's bias). They sum to ``target_value``
    (checked: :func:`~lens_pivotal.attributions.head_attributions` raises otherwise). A target read at
    ``blocks.{l}.hook_resid_mid`` holds block ``l``'s attention but not its MLP, so ``mlp`` then has one block fewer
    than ``heads``. ``patterns[l, h, s]`` is the attention of ``position`` to ``s``; ``top_patterns`` the whole
    patterns of the heads in ``top_pattern_heads``.
    """

    tokens: list[str]
    token_ids: list[int]
    position: int
    target_label: str
    target_value: float
    heads: Float[Tensor, "n_blocks n_heads n_source"]
    attention_bias: Float[Tensor, " n_blocks"]
    mlp: Float[Tensor, " n_blocks"]
    embedding: float
    constant: float
    patterns: Float[Tensor, "n_blocks n_heads n_source"]
    top_patterns: Float[Tensor, "n_top n_source n_source"]
    top_pattern_heads: list[tuple[int, int]]

    @property
    def head_totals(self) -> Float[Tensor, "n_blocks n_heads"]:
        """Each head's whole direct contribution."""
        return self.heads.sum(dim=-1)

    @property
    def source_totals(self) -> Float[Tensor, " n_source"]:
        """What all heads together carry from each source token."""
        return self.heads.sum(dim=(0, 1))

    @property
    def total(self) -> float:
        """The sum of every part: ``target_value`` up to float rounding."""
        parts = (self.heads.sum(), self.attention_bias.sum(), self.mlp.sum())
        return float(sum(float(part) for part in parts) + self.embedding + self.constant)

    def top_heads(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest ``|contribution|``: ``(block, head, contribution)``, largest first."""
        totals = self.head_totals
        order = totals.flatten().abs().argsort(descending=True)[: min(k, totals.numel())]
        n_heads = totals.shape[1]
        return [(int(index) // n_heads, int(index) % n_heads, float(totals.flatten()[index])) for index in order]


@dataclass
class PivotExplanation:
    """One PTS row explained: ``probe`` attributes the probe's logit, ``pivot`` the pivot token's log-probability,
    both read at the last token of the row's context (the one whose next token is the pivot)."""

    row: PivotalToken
    probe: TokenAttribution
    pivot: TokenAttribution
