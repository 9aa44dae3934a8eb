"""Pivotal Token Search (codelion/pts) for any TransformerLens model.

P(success | prefix) is estimated by sampling completions of the prefix and grading them with an oracle.
Problems whose baseline success lies in [min_prob, max_prob] are kept; some of the baseline samples are then
bisected: a token span is skipped when its end-points' success probabilities differ by less than the
threshold, emitted when it is one token long, and split in two otherwise.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from lens_pivotal.distributed import all_ranks, map_in_step, on_rank_zero, shard, world
from lens_pivotal.pts.output import ProblemKey, ResumableOutput, finished_problems, merge_parts, part_path
from lens_pivotal.pts.problems import Oracle, Problem, numeric_oracle
from lens_pivotal.pts.prompts import PromptFormat, prompt_token_ids
from lens_pivotal.pts.rollouts import BridgeRollouts, HFRollouts, RolloutBackend, SamplingConfig, stop_token_ids
from lens_pivotal.pts.schema import PivotalToken
from lens_pivotal.tokens import own_tokenizer

Prefix = tuple[int, ...]


@dataclass(frozen=True)
class SearchConfig:
    """Settings of a search (defaults are those of codelion/pts except ``solutions_per_problem``).

    Attributes:
        num_samples: completions per probability estimate.
        prob_threshold: minimum |P(after) - P(before)| of a pivotal token.
        min_prob, max_prob: keep only problems whose baseline success lies in this range.
        max_new_tokens: length budget of a whole solution; a rollout from a prefix of k generated tokens gets
            ``max_new_tokens - k`` more, so every estimate is about the same bounded solution.
        solutions_per_problem: baseline samples bisected per problem, alternating successes and failures so that
            both signs of pivot are searched for.
        seed: with the problem and the prefix, seeds every estimate (so caching and resuming change nothing).
        sampling: temperature, top-p and top-k.
    """

    num_samples: int = 50
    prob_threshold: float = 0.2
    min_prob: float = 0.2
    max_prob: float = 0.8
    max_new_tokens: int = 512
    solutions_per_problem: int = 2
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.solutions_per_problem < 1:
            raise ValueError("num_samples, max_new_tokens and solutions_per_problem must be >= 1")
        if not 0 <= self.min_prob <= self.max_prob <= 1 or not 0 < self.prob_threshold <= 1:
            raise ValueError("need 0 <= min_prob <= max_prob <= 1 and 0 < prob_threshold <= 1")

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> SearchConfig:
        """The inverse of ``dataclasses.asdict`` (e.g. to rebuild the settings recorded in a ``.progress.jsonl``)."""
        return cls(**(settings | {"sampling": SamplingConfig(**settings["sampling"])}))


def derive_seed(seed: int, problem: Problem, prefix: Sequence[int]) -> int:
    """A 63-bit seed for one (problem, prefix) estimate, stable across processes and runs."""
    material = json.dumps([seed, problem.dataset_id, problem.item_id, list(prefix)]).encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big") >> 1


def graded_rollouts(
    backend: RolloutBackend, tokenizer: Any, oracle: Oracle, answer: str, context: Sequence[int], graded_prefix: Sequence[int],
    num_samples: int, max_new_tokens: int, seed: int,
) -> tuple[list[list[int]], list[bool]]:
    """Sample ``num_samples`` continuations of ``context``; each solution is ``graded_prefix`` + its continuation,
    decoded and graded by ``oracle`` against ``answer``. Returns the solutions and whether each is solved."""
    continuations = backend.sample(list(context), num_samples, max_new_tokens, seed)
    solutions = [list(graded_prefix) + continuation for continuation in continuations]
    return solutions, [oracle(tokenizer.decode(solution, skip_special_tokens=True), answer) for solution in solutions]


class SuccessEstimator:
    """P(success | generated prefix) for one problem, by sampling; cached per prefix."""

    def __init__(self, backend: RolloutBackend, tokenizer: Any, problem: Problem, prompt_ids: Sequence[int],
                 oracle: Oracle, config: SearchConfig, stop_ids: Sequence[int]) -> None:
        self.backend, self.tokenizer, self.problem = backend, tokenizer, problem
        self.prompt_ids, self.oracle, self.config = list(prompt_ids), oracle, config
        self.stop_ids = set(stop_ids)
        self.cache: dict[Prefix, float] = {}
        self.rollout_calls = 0

    def solved(self, solution: Sequence[int]) -> bool:
        """Whether a complete solution reaches the answer, per the oracle."""
        return self.oracle(self.tokenizer.decode(list(solution), skip_special_tokens=True), self.problem.answer)

    def is_complete(self, prefix: Sequence[int]) -> bool:
        """A prefix that ended with a stop token or used the whole budget: nothing more can be sampled."""
        return len(prefix) >= self.config.max_new_tokens or bool(prefix) and prefix[-1] in self.stop_ids

    def solutions(self, prefix: Prefix = ()) -> list[list[int]]:
        """``num_samples`` complete solutions starting with ``prefix``; also caches P(success | prefix)."""
        self.rollout_calls += 1
        solutions, solved = graded_rollouts(
            self.backend, self.tokenizer, self.oracle, self.problem.answer, self.prompt_ids + list(prefix), prefix,
            self.config.num_samples, self.config.max_new_tokens - len(prefix), derive_seed(self.config.seed, self.problem, prefix),
        )
        self.cache[prefix] = sum(solved) / len(solved)
        return solutions

    def probability(self, prefix: Prefix) -> float:
        """P(success | prefix): exact for a complete prefix, else the solved fraction of ``num_samples`` rollouts."""
        if prefix not in self.cache:
            if self.is_complete(prefix):
                self.cache[prefix] = float(self.solved(prefix))
            else:
                self.solutions(prefix)
        return self.cache[prefix]


def bisect_pivots(probability: Callable[[Prefix], float], solution: Sequence[int], threshold: float,
                  start: int = 0, end: int | None = None) -> Iterator[tuple[int, float, float]]:
    """``(index, p_before, p_after)`` of every pivotal token of ``solution`` found by recursive bisection.

    ``probability(solution[:k])`` is P(success) after the first k tokens; a span whose end-points differ by less
    than ``threshold`` is skipped, a one-token span is emitted, and any other span is split at its middle.
    """
    end = len(solution) if end is None else end
    spans = [(start, end)]
    while spans:
        low, high = spans.pop()
        p_low, p_high = probability(tuple(solution[:low])), probability(tuple(solution[:high]))
        if abs(p_high - p_low) < threshold:
            continue
        if high - low == 1:
            yield low, p_low, p_high
            continue
        middle = (low + high) // 2
        spans.extend([(middle, high), (low, middle)])  # the left half is popped, hence reported, first


def pick_solutions(solutions: list[list[int]], solved: Callable[[list[int]], bool], count: int) -> list[list[int]]:
    """Up to ``count`` distinct solutions, alternating solved and unsolved ones while both remain."""
    distinct = list({tuple(solution): solution for solution in solutions}.values())
    good = [solution for solution in distinct if solved(solution)]
    bad = [solution for solution in distinct if not solved(solution)]
    picked = []
    while len(picked) < count and (good or bad):
        for pool in (good, bad):
            if pool and len(picked) < count:
                picked.append(pool.pop(0))
    return picked


@dataclass
class ProblemSearch:
    """Everything a search of one problem needs besides the problem."""

    backend: RolloutBackend
    tokenizer: Any
    oracle: Oracle
    config: SearchConfig
    prompt: PromptFormat
    model_id: str
    stop_ids: Sequence[int]

    def run(self, problem: Problem) -> tuple[list[PivotalToken], dict[str, Any]]:
        """The problem's pivotal tokens (no repeats) and a progress record (baseline, status, cost)."""
        started = time.perf_counter()
        prompt_ids = prompt_token_ids(self.tokenizer, problem.question, self.prompt)
        estimator = SuccessEstimator(self.backend, self.tokenizer, problem, prompt_ids, self.oracle, self.config, self.stop_ids)
        samples = estimator.solutions()
        baseline = estimator.cache[()]
        rows: dict[Prefix, PivotalToken] = {}
        in_range = self.config.min_prob <= baseline <= self.config.max_prob
        if in_range:
            for solution in pick_solutions(samples, estimator.solved, self.config.solutions_per_problem):
                for index, before, after in bisect_pivots(estimator.probability, solution, self.config.prob_threshold):
                    key = tuple(solution[: index + 1])
                    rows.setdefault(key, self._row(problem, prompt_ids, solution, index, before, after))
        record = {"baseline": baseline, "status": "searched" if in_range else "baseline_out_of_range",
                  "rows": len(rows), "estimates": estimator.rollout_calls,
                  "seconds": round(time.perf_counter() - started, 2)}
        return list(rows.values()), record

    def _row(self, problem: Problem, prompt_ids: list[int], solution: list[int], index: int, before: float,
             after: float) -> PivotalToken:
        token = solution[index]
        return PivotalToken(
            model_id=self.model_id, query=problem.question,
            pivot_context=self.tokenizer.decode(prompt_ids + solution[:index]),
            pivot_token=self.tokenizer.decode([token]), pivot_token_id=token,
            prob_before=before, prob_after=after, task_type=problem.task_type, dataset_id=problem.dataset_id,
            dataset_item_id=problem.item_id, timestamp=datetime.datetime.now().isoformat(timespec="seconds"),
            position=len(prompt_ids) + index, solution=self.tokenizer.decode(prompt_ids + solution),
        )

    def settings(self) -> dict[str, Any]:
        """What determines the rows, recorded with resumable output."""
        oracle_name = f"{getattr(self.oracle, '__module__', '?')}.{getattr(self.oracle, '__qualname__', repr(self.oracle))}"
        return {"model_id": self.model_id, "search": asdict(self.config), "prompt": self.prompt.to_dict(), "oracle": oracle_name}


def hf_backend(model: Any, sampling: SamplingConfig, hooks: bool = False) -> HFRollouts:
    """Batched KV-cached rollouts on a TransformerLens bridge (or on an HF causal LM itself).

    A bridge gets :class:`~lens_pivotal.pts.rollouts.BridgeRollouts`: while hooks are attached to it (a steering hook,
    an ablation, added with ``model.hooks(...)`` before or after this call) they act on every sampled token;
    otherwise it samples through :func:`~lens_pivotal.unhooked.unhooked_hf_model` (same weights, no hook points,
    fused attention: faster) unless a device map split it over GPUs. ``hooks=True`` always samples through
    ``model.original_model``, so that runs with and without hooks share its numerics (steering evaluation).
    """
    if not hasattr(model, "original_model"):
        return HFRollouts(model, stop_token_ids(model.tokenizer, model), sampling)
    return BridgeRollouts(model, sampling, hooks)


def search_pivotal_tokens(
    model: Any,
    problems: Iterable[Problem],
    *,
    oracle: Oracle = numeric_oracle,
    num_samples: int = 50,
    prob_threshold: float = 0.2,
    min_prob: float = 0.2,
    max_prob: float = 0.8,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 20,
    max_new_tokens: int = 512,
    seed: int = 0,
    solutions_per_problem: int = 2,
    prompt: PromptFormat | None = None,
    backend: RolloutBackend | None = None,
    model_id: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> Iterator[PivotalToken]:
    """Find pivotal tokens of ``model`` on ``problems``, yielding PTS rows (v1 fields plus ``position``,
    and ``solution``: the whole sampled solution each pivot was found on).

    Args:
        model: a TransformerLens ``TransformerBridge`` (``load_model``/``embedded_model``): its tokenizer formats
            prompts and, unless ``backend`` is given, its HF model samples rollouts (:func:`hf_backend`): while hooks
            are attached to the bridge (``with model.hooks(...)`` around the search: a steering vector, an ablation),
            through them, so the rows are the hooked model's; otherwise through the faster unhooked copy.
        problems: e.g. :func:`arithmetic_problems`, :func:`gsm8k_problems` or :func:`load_problems_jsonl`.
        oracle: ``oracle(completion, answer) -> bool``, given the whole decoded answer; the default compares the
            final number.
        num_samples ... seed, solutions_per_problem: see :class:`SearchConfig`.
        prompt: how questions are presented; default: the question alone, in the chat template if the tokenizer
            has one.
        backend: the rollout sampler; default :func:`hf_backend` on the model (pass :class:`VLLMRollouts` for
            vLLM). It must sample with the same temperature/top-p/top-k.
        model_id: the rows' ``model_id``; default ``model.cfg.model_name``.
        out: a JSONL path: rows are appended per finished problem, and rerunning with the same settings skips the
            problems already done (only new rows are yielded). Under an initialised ``torch.distributed`` process
            group, call this on every rank with the same arguments: problems are dealt out round-robin, each rank
            writes ``name.part-RANK-of-N.jsonl`` (resumable on its own), and once every rank is done rank 0 merges
            the parts into ``out``, equal to a one-process run. Parts left by an interrupted run, with any
            number of processes, are merged in first. The ranks meet after every problem, and a caller that
            stopped reading early would leave the others waiting there, so the whole search runs inside this call,
            which then returns an iterator over this rank's new rows. A failure on any rank is raised on every rank,
            naming that rank. (Without ``out`` every rank searches every problem, lazily.)
        progress: show a tqdm bar over problems.

    The same seed gives the same rows (timestamps aside), however the run is split by interruptions.
    """
    config = SearchConfig(num_samples, prob_threshold, min_prob, max_prob, max_new_tokens, solutions_per_problem,
                          seed, SamplingConfig(temperature, top_p, top_k))
    tokenizer = own_tokenizer(model)
    search = ProblemSearch(
        backend=backend or hf_backend(model, config.sampling), tokenizer=tokenizer, oracle=oracle, config=config,
        prompt=prompt or PromptFormat(), model_id=model_id or model.cfg.model_name,
        stop_ids=stop_token_ids(tokenizer, getattr(model, "original_model", None)),
    )
    problems = list(problems)
    if out is not None and world()[1] > 1:
        return iter(_search_on_every_rank(search, problems, out, progress))
    return _search_here(search, problems, out, progress)


def _search_here(
    search: ProblemSearch, problems: list[Problem], out: str | os.PathLike | None, progress: bool
) -> Iterator[PivotalToken]:
    """The search in this process alone, each problem's rows yielded (and, with ``out``, recorded) once it is done."""
    if out is None:
        yield from _search(search, problems, None, set(), progress)
        return
    settings, order = search.settings(), _problem_keys(problems)
    merged = merge_parts(out, settings, order)  # the parts of an interrupted multi-process run
    yield from _search(search, problems, ResumableOutput.open(out, settings), set(), progress)
    if merged:  # problems the parts lacked were appended after them
        merge_parts(out, settings, order, reorder=True)


def _search_on_every_rank(
    search: ProblemSearch, problems: list[Problem], out: str | os.PathLike, progress: bool
) -> list[PivotalToken]:
    """This rank's share of the search, written to its part of ``out``; rank 0 merges the parts before and after.
    The ranks meet after every problem (:func:`~lens_pivotal.distributed.map_in_step`)."""
    rank, size = world()
    settings, order = search.settings(), _problem_keys(problems)
    on_rank_zero(lambda: merge_parts(out, settings, order))
    own_part, done = all_ranks(
        lambda: (ResumableOutput.open(part_path(out, rank, size), settings), finished_problems(out, settings))
    )
    with tqdm(total=len(shard(problems)), desc="PTS problems", unit="problem", disable=not progress) as bar:

        def search_problem(problem: Problem) -> list[PivotalToken]:
            rows = list(_search(search, [problem], own_part, done, progress=False))
            bar.update()
            return rows

        found = map_in_step(search_problem, problems)
    on_rank_zero(lambda: merge_parts(out, settings, order))
    return [row for rows in found for row in rows]


def _problem_keys(problems: list[Problem]) -> list[ProblemKey]:
    return [(problem.dataset_id, problem.item_id) for problem in problems]


def _search(
    search: ProblemSearch, problems: list[Problem], output: ResumableOutput | None, done: set[ProblemKey], progress: bool
) -> Iterator[PivotalToken]:
    """Search each problem not yet in ``output`` or ``done``, recording each finished one in ``output``."""
    bar = tqdm(problems, desc="PTS problems", unit="problem", disable=not progress)
    found = 0
    for problem in bar:
        key = (problem.dataset_id, problem.item_id)
        if key in done or (output is not None and output.is_finished(key)):
            continue
        rows, record = search.run(problem)
        if output is not None:
            output.finish_problem(key, rows, record)
        found += len(rows)
        bar.set_postfix(rows=found, baseline=f"{record['baseline']:.2f}")
        yield from rows
