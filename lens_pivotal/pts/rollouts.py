"""Batched, KV-cached sampling of many continuations of one token prefix: the cost centre of PTS.

:class:`HFRollouts` runs the prefix through the model once, repeats its KV cache over the samples and decodes
them together, dropping each sample from the batch as soon as it emits a stop token; :class:`BridgeRollouts` does so
on a TransformerLens bridge, through whichever HF model computes what the bridge computes now (its hooks included).
:class:`VLLMRollouts` does the same through vLLM when it is installed (never imported otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from lens_pivotal.hook_points import attached_hook_points
from lens_pivotal.kv_cache import repeated_cache
from lens_pivotal.unhooked import is_split, unhooked_hf_model


@dataclass(frozen=True)
class SamplingConfig:
    """How each next token is drawn (PTS defaults). ``temperature=0`` is greedy; ``top_k=0`` disables top-k."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {self}")


class RolloutBackend(Protocol):
    """Anything that samples continuations of a token prefix."""

    def sample(self, context: Sequence[int], num_samples: int, max_new_tokens: int, seed: int) -> list[list[int]]:
        """``num_samples`` continuations of ``context``, each at most ``max_new_tokens`` long, ending at a stop token
        (kept) or at the length limit. The same arguments always give the same continuations."""
        ...


def sample_next_tokens(logits: Tensor, sampling: SamplingConfig, generator: torch.Generator) -> Tensor:
    """One token per row of ``logits`` [batch, vocab]: temperature, then top-k, then top-p (nucleus), as HF does."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / sampling.temperature
    k = sampling.top_k if 0 < sampling.top_k < scaled.shape[-1] else scaled.shape[-1]
    values, indices = scaled.topk(k, dim=-1)  # sorted, so top-p only needs the k survivors
    probs = values.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(mass_before > sampling.top_p, 0.0)  # the most likely token always survives
    choice = torch.multinomial(probs, 1, generator=generator)
    return indices.gather(-1, choice).squeeze(-1)


def stop_token_ids(tokenizer: Any, hf_config: Any = None) -> list[int]:
    """The tokens that end a completion: the tokenizer's EOS plus the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(getattr(hf_config, "generation_config", None), "eos_token_id", None)
    if generation_eos is not None:
        ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id: cannot tell when a completion ends")
    return sorted(ids)


class HFRollouts:
    """KV-cached batched sampling on a Hugging Face causal LM (for a bridge: ``model.original_model``).

    The prefix is run once (batch 1) and its cache repeated over the samples; finished samples leave the batch,
    so short answers cost little. Randomness comes from a private ``torch.Generator`` seeded per call: results
    depend only on the arguments, and the global RNG is untouched.
    """

    def __init__(self, hf_model: Any, stop_ids: Sequence[int], sampling: SamplingConfig = SamplingConfig()) -> None:
        self.hf_model = hf_model.eval()
        self.stop_ids = torch.tensor(sorted(set(stop_ids)))
        self.sampling = sampling
        self.device = next(hf_model.parameters()).device

    def sampling_model(self) -> Any:
        """The HF model the next :meth:`sample` runs on."""
        return self.hf_model

    @torch.inference_mode()
    def sample(self, context: Sequence[int], num_samples: int, max_new_tokens: int, seed: int) -> list[list[int]]:
        """See :meth:`RolloutBackend.sample`."""
        if not context:
            raise ValueError("cannot sample from an empty context")
        if max_new_tokens <= 0 or num_samples <= 0:
            return [[] for _ in range(max(num_samples, 0))]
        hf_model = self.sampling_model()
        generator = torch.Generator(self.device).manual_seed(seed)
        stop_ids = self.stop_ids.to(self.device)
        prompt = torch.tensor([list(context)], device=self.device)
        output = hf_model(prompt, use_cache=True, logits_to_keep=1)
        cache = repeated_cache(output.past_key_values, num_samples)
        logits = output.logits[:, -1].expand(num_samples, -1)
        alive = torch.arange(num_samples, device=self.device)
        steps: list[tuple[Tensor, Tensor]] = []
        for step in range(max_new_tokens):
            tokens = sample_next_tokens(logits, self.sampling, generator)
            steps.append((alive, tokens))
            running = ~torch.isin(tokens, stop_ids)
            if step == max_new_tokens - 1 or not running.any():
                break
            if not running.all():
                alive, tokens = alive[running], tokens[running]
                cache.batch_select_indices(running.nonzero().squeeze(-1))
            logits = hf_model(tokens[:, None], past_key_values=cache, use_cache=True).logits[:, -1]
        return _collect(steps, num_samples)


class BridgeRollouts(HFRollouts):
    """:class:`HFRollouts` on a TransformerLens bridge, sampling what the bridge computes at the time of each call.

    While no hook is attached to the bridge's hook points, samples come from
    :func:`~lens_pivotal.unhooked.unhooked_hf_model` (the same weights without hook points, with fused attention:
    faster), built at the first such call; while any is attached (``model.hooks(...)``, ``add_hook``: a steering
    vector, an ablation) they come from ``model.original_model``, whose hook points fire at every step, so the hooks
    act on every sampled token. With ``hooks=True``, or on a model a device map split over devices
    (:func:`~lens_pivotal.unhooked.is_split`), always from the latter. Stop tokens are the tokenizer's EOS and the
    checkpoint's ``generation_config`` EOS ids.
    """

    def __init__(self, model: Any, sampling: SamplingConfig = SamplingConfig(), hooks: bool = False) -> None:
        super().__init__(model.original_model, stop_token_ids(model.tokenizer, model.original_model), sampling)
        self.bridge = model
        self.always_hooked = hooks or is_split(model.original_model)
        self._unhooked: Any = None

    def sampling_model(self) -> Any:
        """``model.original_model`` while hooks are attached to the bridge (or always, see above), else the unhooked
        model."""
        if self.always_hooked or attached_hook_points(self.bridge):
            return self.hf_model
        if self._unhooked is None:
            self._unhooked = unhooked_hf_model(self.bridge)
        return self._unhooked


def _collect(steps: list[tuple[Tensor, Tensor]], num_samples: int) -> list[list[int]]:
    """Per-sample token lists from the (rows alive, tokens drawn) of each step."""
    sequences: list[list[int]] = [[] for _ in range(num_samples)]
    for alive, tokens in steps:
        for row, token in zip(alive.tolist(), tokens.tolist()):
            sequences[row].append(token)
    return sequences


class VLLMRollouts:
    """The same sampling through vLLM (``pip install vllm``; imported only when this class is built)."""

    def __init__(self, model_path: str, stop_ids: Sequence[int], sampling: SamplingConfig = SamplingConfig(), **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("the vLLM rollout backend needs vllm: pip install vllm") from None
        self.llm = LLM(model=model_path, **llm_kwargs)
        self.stop_ids = sorted(set(stop_ids))
        self.sampling = sampling

    def sample(self, context: Sequence[int], num_samples: int, max_new_tokens: int, seed: int) -> list[list[int]]:
        """See :meth:`RolloutBackend.sample`."""
        from vllm import SamplingParams, TokensPrompt

        if max_new_tokens <= 0:
            return [[] for _ in range(num_samples)]
        params = SamplingParams(
            n=num_samples, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
            top_k=self.sampling.top_k or -1, max_tokens=max_new_tokens, seed=seed, stop_token_ids=self.stop_ids,
        )
        (result,) = self.llm.generate([TokensPrompt(prompt_token_ids=list(context))], params, use_tqdm=False)
        return [_with_stop(list(output.token_ids), output.finish_reason, self.stop_ids) for output in result.outputs]


def _with_stop(tokens: list[int], finish_reason: str | None, stop_ids: list[int]) -> list[int]:
    """vLLM may leave the stop token out; put one back so both backends return the same shape of completion."""
    if finish_reason == "stop" and (not tokens or tokens[-1] not in stop_ids):
        return [*tokens, stop_ids[0]]
    return tokens
