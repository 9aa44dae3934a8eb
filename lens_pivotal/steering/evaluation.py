"""Does steering change success? Sample solutions of held-out problems with and without an intervention, grade them
with the problem's oracle, and compare, with a random-direction control of the same norm at the same positions.

Every setting samples each problem with the same seed (common random numbers), so differences against no steering
are paired per problem; intervals are percentile bootstraps over problems.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lens_pivotal.probes.selection import group_bootstrap_weights
from lens_pivotal.pts.problems import Problem, numeric_oracle
from lens_pivotal.pts.prompts import PromptFormat, prompt_token_ids
from lens_pivotal.pts.rollouts import SamplingConfig
from lens_pivotal.pts.search import derive_seed, graded_rollouts, hf_backend
from lens_pivotal.steering.hooks import SteeringHook, steering_hook
from lens_pivotal.tokens import own_tokenizer
from lens_pivotal.viz import format_table

NO_STEERING = "none"
RANDOM_PREFIX = "random: "


@dataclass(frozen=True)
class SettingResult:
    """One setting's success rate over problems (mean of per-problem solved fractions) with its interval, the paired
    difference against no steering with its interval, and the mean answer length in tokens."""

    name: str
    success: float
    low: float
    high: float
    minus_none: float
    minus_none_low: float
    minus_none_high: float
    mean_length: float
    per_problem: list[float]


@dataclass
class SteeringReport:
    """Every setting's :class:`SettingResult` on the same problems and samples."""

    results: list[SettingResult]
    problems: list[str]
    samples: int
    seed: int

    def __getitem__(self, name: str) -> SettingResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no setting {name!r}; the settings are {[result.name for result in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return asdict(self)

    def format_table(self) -> str:
        """One row per setting: success rate, difference against no steering (95% intervals) and mean length."""
        rows = [
            [result.name, f"{result.success:.3f} [{result.low:.2f}, {result.high:.2f}]",
             f"{result.minus_none:+.3f} [{result.minus_none_low:+.2f}, {result.minus_none_high:+.2f}]", f"{result.mean_length:.1f}"]
            for result in self.results
        ]  # fmt: skip
        caption = f"{len(self.problems)} held-out problems x {self.samples} samples, seed {self.seed}:"
        return caption + "\n" + format_table(["setting", "success [95% CI]", "minus none [95% CI]", "mean length"], rows, align="lrrr")


def random_control(hook: SteeringHook, seed: int = 0) -> SteeringHook:
    """``hook`` with its addition turned to a random direction of the same norm (same positions, same gate)."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(hook.addition.shape, generator=generator)
    addition = direction / direction.norm() * hook.addition.float().norm()
    return SteeringHook(hook.hook_name, addition, hook.positions, hook.gate)


def evaluate_steering(
    model: Any,
    problems: Sequence[Problem],
    hooks: Mapping[str, SteeringHook | Sequence[SteeringHook]],
    *,
    samples: int = 8,
    seed: int = 0,
    prompt: PromptFormat | None = None,
    oracle: Callable[[str, str], bool] = numeric_oracle,
    max_new_tokens: int = 64,
    sampling: SamplingConfig = SamplingConfig(),
    controls: bool = True,
    built_from: Collection[str] = (),
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    progress: bool = True,
) -> SteeringReport:
    """Success rates of ``model`` on ``problems`` with no steering and with each named set of ``hooks``.

    Args:
        hooks: setting name → hooks active together (e.g. ``{"steered": h, "gated": g}``).
        samples: sampled solutions per problem and setting (the PTS rollout engine: prompt cache shared, batched).
        controls: also run ``"random: NAME"`` for each setting, its hooks turned to random directions of the same
            norm at the same positions (:func:`random_control`).
        built_from: the problems the vectors were built from (``SteeringVectors.config.groups``); evaluating on one
            of them is an error.
    """
    names = [problem.group for problem in problems]
    reused = sorted(set(names) & set(built_from))
    if reused:
        raise ValueError(f"{len(reused)} problems were used to build the vectors (e.g. {reused[0]!r}): evaluate on held-out ones")
    if NO_STEERING in hooks or not problems:
        raise ValueError(f"give at least one problem, and no setting named {NO_STEERING!r} (it is always run)")
    settings = {NO_STEERING: [], **{name: [value] if isinstance(value, SteeringHook) else list(value) for name, value in hooks.items()}}
    if controls:
        settings |= {f"{RANDOM_PREFIX}{name}": [random_control(hook, seed + index) for index, hook in enumerate(chosen)]
                     for name, chosen in list(settings.items())[1:]}  # fmt: skip
    backend = hf_backend(model, sampling, hooks=True)
    prompt = prompt or PromptFormat()
    solved = {name: np.zeros(len(problems)) for name in settings}
    lengths = {name: np.zeros(len(problems)) for name in settings}
    for number, problem in enumerate(tqdm(problems, desc="steering evaluation", unit="problem", disable=not progress)):
        prompt_ids = prompt_token_ids(own_tokenizer(model), problem.question, prompt)
        for name, chosen in settings.items():
            for hook in chosen:
                hook.reset()
            with model.hooks(fwd_hooks=[hook.fwd_hook for hook in chosen]):
                completions, graded = graded_rollouts(backend, own_tokenizer(model), oracle, problem.answer, prompt_ids, [],
                                                      samples, max_new_tokens, derive_seed(seed, problem, ()))
            solved[name][number] = np.mean(graded)
            lengths[name][number] = np.mean([len(tokens) for tokens in completions])
    weights = group_bootstrap_weights(names, n_bootstrap, seed).double().numpy()
    results = [_summarise(name, solved[name], solved[NO_STEERING], lengths[name], weights, confidence) for name in settings]
    return SteeringReport(results, names, samples, seed)


def _summarise(name: str, solved: np.ndarray, baseline: np.ndarray, lengths: np.ndarray, weights: np.ndarray,
               confidence: float) -> SettingResult:  # fmt: skip
    tail = 100 * (1 - confidence) / 2
    draws = weights @ solved / weights.sum(axis=1)
    differences = weights @ (solved - baseline) / weights.sum(axis=1)
    low, high = np.percentile(draws, [tail, 100 - tail]) if len(weights) else (np.nan, np.nan)
    minus_low, minus_high = np.percentile(differences, [tail, 100 - tail]) if len(weights) else (np.nan, np.nan)
    return SettingResult(
        name, float(solved.mean()), float(low), float(high), float((solved - baseline).mean()), float(minus_low),
        float(minus_high), float(lengths.mean()), solved.tolist(),
    )


def setting_name(kind: str, alpha: float) -> str:
    """The name :func:`alpha_sweep` gives a setting: ``"steered a=4"``, ``"gated a=4"``."""
    return f"{kind} a={alpha:g}"


def alpha_sweep(
    vectors: Any,
    layer: int,
    alphas: Sequence[float],
    *,
    positions: Any = "generated",
    gate: tuple[Any, Any] | None = None,
) -> dict[str, SteeringHook]:
    """Settings for :func:`evaluate_steering`: ``"steered a=ALPHA"`` for each alpha and, with ``gate=(probes,
    threshold)``, ``"gated a=ALPHA"`` (the same vector added only where the probe fires)."""
    settings = {}
    for alpha in alphas:
        settings[setting_name("steered", alpha)] = steering_hook(vectors, alpha, layer=layer, positions=positions)
        if gate is not None:
            settings[setting_name("gated", alpha)] = steering_hook(vectors, alpha, layer=layer, positions=positions, gate=gate)
    return settings
