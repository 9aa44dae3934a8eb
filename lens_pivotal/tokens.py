"""The one tokenization rule every lens_pivotal entry point follows.

- A string is tokenized the way the model's own Hugging Face tokenizer does by default, ``tokenizer(text)`` with its
  own special-token settings (Llama 3 adds its BOS, Qwen and SmolLM2 add nothing), so our numbers equal what the same
  model gives in plain transformers. TransformerLens replaces ``model.tokenizer`` by a copy that always adds the BOS
  token, so :func:`lens_pivotal.load_model` keeps the model's own tokenizer beside it (:func:`own_tokenizer`).
- ``tokenization="transformer_lens"`` asks for TransformerLens' rule instead, ``model.to_tokens(text)``, which prepends
  a BOS per ``model.cfg.default_prepend_bos`` (for SmolLM2 that is ``<|im_start|>``, which its tokenizer never adds).
- A text that already holds one of the model's special tokens, such as a PTS context written through a chat
  template, is read as it is (``add_special_tokens=False``): the tokens the model saw, with no second BOS.
- Every entry point (caching, probes' ``score_text``, attributions, PatchScope, PTS and steering prompts) follows
  this one rule by default (``add_special_tokens=None``); ``True`` or ``False`` overrides it.
- Token ids (a list of ints or a 1-D tensor) are always used as given.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, Union, get_args

import torch
from jaxtyping import Int
from torch import Tensor

Tokenization = Literal["tokenizer", "transformer_lens"]
TextOrIds = Union[str, Sequence[int], Int[Tensor, " seq"]]


_OWN_TOKENIZER = "_lens_pivotal_own_tokenizer"


def keep_own_tokenizer(model: Any, tokenizer: Any) -> None:
    """Remember ``tokenizer`` as ``model``'s own (called by :func:`lens_pivotal.load_model`)."""
    object.__setattr__(model, _OWN_TOKENIZER, tokenizer)


def own_tokenizer(model: Any) -> Any:
    """The model's own HF tokenizer, as loaded from its checkpoint (``model.tokenizer`` for a model that was not
    loaded by :func:`lens_pivotal.load_model`)."""
    return getattr(model, _OWN_TOKENIZER, None) or model.tokenizer


def holds_special_tokens(tokenizer: Any, text: str) -> bool:
    """Whether ``text`` already contains one of ``tokenizer``'s special tokens (a BOS, a chat-template marker)."""
    return any(token and token in text for token in getattr(tokenizer, "all_special_tokens", ()))


def string_ids(model: Any, text: str) -> list[int]:
    """Token ids of a string under the package's rule (:func:`token_ids`), as a list."""
    return token_ids(model, text, device="cpu").tolist()


def check_tokenization(tokenization: str) -> Tokenization:
    """``tokenization`` if it names a rule, else a ValueError naming the argument."""
    if tokenization not in get_args(Tokenization):
        raise ValueError(f"tokenization must be one of {get_args(Tokenization)}, got {tokenization!r}")
    return tokenization  # type: ignore[return-value]


def token_ids(
    model: Any,
    text: TextOrIds,
    *,
    tokenization: Tokenization = "tokenizer",
    add_special_tokens: bool | None = None,
    what: str = "text",
    device: torch.device | str | None = None,
) -> Int[Tensor, " seq"]:
    """Token ids of ``text`` under the package's rule (module docstring), as a 1-D tensor on ``device`` (default: the
    model's device, ready to feed it).

    ``add_special_tokens``: ``None`` follows the rule (the tokenizer's own setting, except for a text that already
    holds a special token); ``True``/``False`` is passed to the tokenizer. ``what`` names the input in error messages
    (``"text 3"``, ``"target_prompt"``).

    Raises:
        TypeError: ``text`` is neither a string nor token ids.
        ValueError: an unknown ``tokenization``, a tensor that is not 1-D integer ids, or no tokens.
    """
    check_tokenization(tokenization)
    device = device if device is not None else getattr(model.cfg, "device", None)
    if isinstance(text, str):
        if add_special_tokens is None:
            add_special_tokens = not holds_special_tokens(own_tokenizer(model), text)
        if tokenization == "transformer_lens" and add_special_tokens:
            ids = model.to_tokens(text)[0]
        else:
            encoded = own_tokenizer(model)(text, add_special_tokens=add_special_tokens)["input_ids"]
            ids = torch.tensor(encoded, dtype=torch.long)
    elif isinstance(text, Tensor):
        if text.ndim != 1 or text.is_floating_point():
            raise ValueError(f"{what}: a token tensor must be 1-D integer ids, got {text.dtype} {tuple(text.shape)}")
        ids = text.long()
    elif isinstance(text, Sequence) and all(isinstance(token, int) and not isinstance(token, bool) for token in text):
        ids = torch.tensor(list(text), dtype=torch.long)
    else:
        raise TypeError(f"{what} must be a string or token ids, got {type(text).__name__}")
    if not len(ids):
        raise ValueError(f"{what} has no tokens")
    return ids.to(device) if device is not None else ids
