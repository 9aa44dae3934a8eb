"""Baselines for pivotal-token probes: what predicts "the next token is pivotal" without a probe.

Pivotal tokens are sampled where the model was unsure, at recurring spots, so a probe's AUROC means little until it
is set beside these, computed on the same examples and scored on the same held-out problems:

- ``entropy`` (nats) and ``top1_prob`` of the model's own next-token distribution at the example's position, read
  from the last block's ``resid_post`` through ``ln_final`` and the unembedding (the model's own output);
- ``position``: the example's index in its answer (:attr:`~lens_pivotal.probes.ProbeExamples.answer_indices`: 0
  when it predicts the answer's first token), something the model knows; not a fraction of the text, whose length
  depends on where the text was cut;
- ``token``: the current token's identity. Its score is the add-one-smoothed log-odds of "pivotal" for that token
  id over the training rows: the solution of a one-hot logistic regression on the id, smoothed so that an id never
  seen in training scores 0.

:func:`fit_baselines` turns each into a probability with a one-feature logistic regression fitted on the training
problems only, which also orients it there: a baseline that predicts the negative class (high ``top1_prob`` means
"not pivotal") gets a negative slope from the training rows, never from the test rows. :func:`fit_logistic` fits
several features at once, e.g. a probe's logit beside the entropy (does the residual stream add anything?).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.lenses import logit_lens
from lens_pivotal.probes.examples import ProbeExamples
from lens_pivotal.probes.training import balanced_weights, fit_lbfgs

BASELINES = ("entropy", "top1_prob", "position", "token")
LOGIT_ROWS = 64  # rows unembedded at once: bounds the [rows, d_vocab] intermediate
BASELINE_L2 = 1e-4  # a whisper of L2 keeps a perfectly separating baseline's slope finite


def example_baselines(
    model: Any, examples: ProbeExamples, final_resid: Tensor | None = None, **cache_kwargs: Any
) -> dict[str, Tensor]:
    """What a sceptical reviewer tries before a probe, one score per example (tensors of length ``len(examples)``):
    ``entropy`` (nats) and ``top1_prob`` of the model's own next-token distribution, ``position`` (the index in the
    answer) and ``token`` (the current token's id; :func:`~lens_pivotal.probes.train_probes` fits its score on the
    training problems). Pass ``final_resid`` (the last block's rows of ``examples.cache``, e.g. ``acts[-1]``) to
    read the logits from that pass instead of running the model again; other keyword arguments go to the cache."""
    if final_resid is None:
        final_resid = examples.cache(model, layers=[model.cfg.n_layers - 1], **{"progress": False, **cache_kwargs})[0]
    if final_resid.ndim != 2 or final_resid.shape[0] != len(examples):
        raise ValueError(
            f"final_resid must be [n_examples, d_model] = [{len(examples)}, {model.cfg.d_model}] (the last block's rows "
            f"of examples.cache), got {tuple(final_resid.shape)}"
        )
    entropy, top1 = [], []
    for chunk in final_resid.split(LOGIT_ROWS):
        log_probs = logit_lens(model, chunk).float().log_softmax(dim=-1)
        entropy.append(-(log_probs.exp() * log_probs).sum(dim=-1).cpu())
        top1.append(log_probs.max(dim=-1).values.exp().cpu())
    return {
        "entropy": torch.cat(entropy), "top1_prob": torch.cat(top1),
        "position": torch.tensor(examples.answer_indices, dtype=torch.float32),
        "token": torch.tensor(examples.current_tokens, dtype=torch.long),
    }  # fmt: skip


def per_token_totals(token_ids: Tensor, values: Tensor, train: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per distinct token id, the sum of ``values`` and the count over the ``train`` rows (float64), and each row's
    index into them: the training statistics of a token-identity baseline."""
    ids, inverse = torch.unique(token_ids, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse[train], values[train].double())
    counts = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse[train], torch.ones(len(train), dtype=torch.float64))
    return sums, counts, inverse


def token_log_odds(token_ids: Tensor, labels: Tensor, train: Tensor) -> Float[Tensor, " n"]:
    """Each row's token scored by the add-one-smoothed log-odds of label 1 for that id over the ``train`` rows."""
    positives, totals, inverse = per_token_totals(token_ids, labels, train)
    return (torch.log(positives + 1) - torch.log(totals - positives + 1))[inverse].float()


def check_baselines(baselines: dict[str, Tensor], n_rows: int) -> None:
    """Each baseline must be a 1-D tensor of one value per row."""
    for name, values in baselines.items():
        if not isinstance(values, Tensor) or values.shape != (n_rows,):
            found = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"baselines[{name!r}] must be a tensor of {n_rows} values (one per row), got {found}")


def fit_baselines(
    baselines: dict[str, Tensor], labels: Tensor, train: Tensor, *, balanced: bool = True
) -> Float[Tensor, "n_baselines n"]:
    """Every row's probability under each baseline (in ``baselines``' order): integer baselines (token ids) become
    their training log-odds, then each gets a one-feature logistic regression fitted on the ``train`` rows."""
    features = [
        token_log_odds(values, labels, train) if not values.is_floating_point() else values
        for values in baselines.values()
    ]
    return fit_logistic(torch.stack(features).unsqueeze(-1), labels, train, balanced=balanced)


def fit_logistic(
    features: Float[Tensor, "n_models n n_features"], labels: Tensor, train: Tensor, *, balanced: bool = True
) -> Float[Tensor, "n_models n"]:
    """Every row's probability under each of ``n_models`` independent logistic regressions, each fitted on its own
    features of the ``train`` rows (standardised with the training rows' mean and spread)."""
    x = features.double()
    mean, scale = x[:, train].mean(dim=1, keepdim=True), x[:, train].std(dim=1, keepdim=True).clamp_min(1e-12)
    x = (x - mean) / scale
    y = labels.double()[train].unsqueeze(0)
    weights = balanced_weights(y, torch.ones_like(y)) if balanced else torch.ones_like(y)
    heads = fit_lbfgs(x[:, train], y, weights, torch.tensor(BASELINE_L2, dtype=torch.float64))
    with torch.no_grad():
        return torch.sigmoid(heads.logits(x))[:, 0]
