"""Load a model as TransformerLens' HookedTransformer-equivalent ``TransformerBridge``.

Everything else in lens_pivotal takes the object returned here: it *is* the TransformerLens model, so
``model.hooks(...)``, ``run_with_hooks``, ``run_with_cache`` and ``generate`` all work as usual and the
hook names are the usual ones (``blocks.{l}.hook_resid_post``, ...).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.indices import resolve_index
from lens_pivotal.kv_cache import check_kv_cache as verify_kv_cache
from lens_pivotal.kv_cache import repair_kv_cache
from lens_pivotal.tokens import keep_own_tokenizer

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"


class UnsupportedArchitectureError(ValueError):
    """The checkpoint's architecture has no TransformerLens adapter."""


def resid_post_hook(layer: int) -> str:
    """TransformerLens hook name of block ``layer``'s output (the residual stream after the block)."""
    return f"blocks.{layer}.hook_resid_post"


EMBEDDING_HOOK = "blocks.0.hook_resid_pre"
UNKNOWN_MODEL = "unknown"  # the model name recorded by probes or vectors made without a model


class StopForward(Exception):
    """Raised by a hook once everything its caller needs is read: the rest of the forward pass is skipped (catch it
    around the ``model(...)`` call)."""


def block_of(hook_name: str) -> int | None:
    """The block whose output ``hook_name`` is (``blocks.{l}.hook_resid_post``), ``None`` for any other hook."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook_name)
    return int(match.group(1)) if match else None


Layer = Union[int, str]
"""A layer, as every lens_pivotal call takes one: a block number ``l`` (TransformerLens' ``blocks.{l}``, whose
``hook_resid_post`` is read; negatives count from the last block), or a hook name such as ``EMBEDDING_HOOK``."""


def layer_hook(layer: Layer, n_layers: int) -> str:
    """The hook name of ``layer`` in a model of ``n_layers`` blocks: ``blocks.{l}.hook_resid_post`` for a block,
    a hook name as given.

    Raises:
        TypeError: ``layer`` is neither an int nor a string.
        IndexError: a block outside the model.
    """
    if isinstance(layer, str):
        return layer
    block = resolve_index(layer, n_layers, f"block {layer!r}", f": the model has {n_layers} blocks")
    return resid_post_hook(block)


def hook_layer(hook_name: str) -> Layer:
    """The :data:`Layer` naming ``hook_name``: its block for a ``hook_resid_post``, else the hook name itself."""
    block = block_of(hook_name)
    return hook_name if block is None else block


def read_hooks(
    model: Any | None, layers: Sequence[int] | None, embeddings: bool, *, n_slots: int | None = None
) -> tuple[int, list[str]]:
    """``(n_model_layers, hook_names)`` of activations cached with ``layers=layers, embeddings=embeddings``.

    With a model, ``layers`` default to all its blocks and negatives count from its last. Without one (``model``
    ``None``) they default to blocks ``0..n_slots - 1`` (less one slot for the embeddings), must be non-negative,
    and ``n_model_layers`` is a lower bound (one past the deepest block). ``n_slots``, when given, must match.

    Raises:
        ValueError: a repeated block, an empty ``layers``, a negative block without a model, or ``n_slots`` slots
            that are not the layers named.
    """
    if layers is not None and (isinstance(layers, int) or len(layers) == 0):
        raise ValueError(f"layers must be a non-empty list of blocks, got {layers!r}")
    if model is not None:
        n_blocks = model.cfg.n_layers
        bound = f": the model has {n_blocks} blocks"
        blocks = list(range(n_blocks)) if layers is None else [resolve_index(b, n_blocks, f"block {b!r}", bound) for b in layers]
    elif layers is None:
        blocks = list(range((n_slots or 0) - int(embeddings)))
    else:
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in layers):
            raise ValueError(f"without model=, layers must be non-negative block numbers, got {list(layers)}")
        blocks = list(layers)
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"layers has repeats: {list(layers or [])}")
    hook_names = [EMBEDDING_HOOK] * bool(embeddings) + [resid_post_hook(block) for block in blocks]
    if n_slots is not None and len(hook_names) != n_slots:
        raise ValueError(f"acts has {n_slots} layers but layers={layers!r}, embeddings={embeddings} name {len(hook_names)}")
    n_model_layers = n_blocks if model is not None else max(blocks, default=-1) + 1
    return n_model_layers, hook_names


def layer_label(hook_name: str) -> str:
    """Short label of a hook: the block number, or ``"emb"`` for the embedding stream."""
    block = block_of(hook_name)
    return str(block) if block is not None else ("emb" if hook_name == EMBEDDING_HOOK else hook_name)


def describe_layer(hook_name: str) -> str:
    """``"block 5"`` for a block's ``hook_resid_post``, else the hook name."""
    block = block_of(hook_name)
    return hook_name if block is None else f"block {block}"


class ModelBound:
    """Something made from one model's residual stream (probes, steering vectors), whose ``config`` records that
    model's ``model_name``, ``d_model`` and ``n_model_layers``; ``_what`` names it in messages."""

    _what = "these"
    config: Any

    def slot(self, layer: Layer) -> int:
        """Where ``layer`` (a block or a hook name, :data:`Layer`) sits in ``config.hook_names``: the index along the
        first axis of the activations this reads, and of its per-layer results.

        Raises:
            ValueError: ``layer`` is not one of the layers this was made from (the message lists them).
        """
        name = layer_hook(layer, self.config.n_model_layers)
        if name not in self.config.hook_names:
            held = ", ".join(describe_layer(hook) for hook in self.config.hook_names)
            raise ValueError(f"{describe_layer(name)} is not among the layers {self._what} read ({held})")
        return self.config.hook_names.index(name)

    @property
    def layers(self) -> list[Layer]:
        """The layers this reads, in slot order: block numbers, or hook names for other streams (the embeddings)."""
        return [hook_layer(name) for name in self.config.hook_names]

    def check_model(self, model: Any) -> None:
        """Raise ``ValueError`` if ``model``'s ``d_model`` or layer count differ from the model this was made from."""
        config, theirs = self.config, (model.cfg.d_model, model.cfg.n_layers)
        unknown = config.model_name == UNKNOWN_MODEL  # made from activations alone: the layer count is a lower bound
        if theirs[0] != config.d_model or (theirs[1] < config.n_model_layers if unknown else theirs[1] != config.n_model_layers):
            raise ValueError(
                f"{self._what} were made from {config.model_name!r} (d_model {config.d_model}, {config.n_model_layers} "
                f"layers); {model.cfg.model_name!r} has d_model {theirs[0]} and {theirs[1]} layers"
            )

    def _check_loaded(self, model: Any) -> None:
        """:meth:`check_model`, and a warning when only the name differs (a base and an instruct model share a shape,
        not a residual stream)."""
        self.check_model(model)
        if self.config.model_name not in (model.cfg.model_name, UNKNOWN_MODEL):
            warnings.warn(
                f"{self._what} were made from {self.config.model_name!r}, not from {model.cfg.model_name!r} (same "
                "shape): a base and an instruct model, say, have different residual streams",
                stacklevel=3,
            )


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """Accept ``torch.bfloat16``, ``"bfloat16"``, ``"bf16"`` etc.; ``None`` means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    resolved = getattr(torch, aliases.get(dtype, dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype (try 'float32', 'bfloat16' or 'float16')")
    return resolved


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def supported_architectures() -> list[str]:
    """HF architecture names (``config.architectures``) that TransformerLens can bridge."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return sorted(SUPPORTED_ARCHITECTURES)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _check_architecture(config: Any, source: str) -> None:
    from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

    try:
        determine_architecture_from_hf_config(config)
    except ValueError:
        found = getattr(config, "architectures", None) or getattr(config, "model_type", "unknown")
        raise UnsupportedArchitectureError(
            f"{source}: architecture {found} is not supported by TransformerLens "
            f"{_tl_version()}; supported include {', '.join(supported_architectures()[:12])}, ... "
            "(see lens_pivotal.model.supported_architectures())"
        ) from None


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def _local_config(path: Path) -> Any:
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    return AutoConfig.from_pretrained(path)


def _checkpoint_tokenizer(name: str) -> Any | None:
    """The checkpoint's tokenizer as its authors configured it, loaded once and handed to the bridge (which keeps a
    copy that always adds BOS); ``None`` when ``name`` has none, leaving the bridge to say what is missing."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError):
        return None


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    hf_model: Any | None = None,
    tokenizer: Any | None = None,
    compat: bool = True,
    check_kv_cache: bool = True,
    device_map: str | dict[str, str | int] | None = None,
) -> TransformerBridge:
    """Load a model as a TransformerLens ``TransformerBridge`` in compatibility mode.

    Args:
        name_or_path: a Hugging Face hub id (``"Qwen/Qwen3-0.6B"``) or a local model directory. With
            ``hf_model`` it only names the model (``model.cfg.model_name``).
        device: ``"cuda"``, ``"cpu"``, ...; ``None`` picks CUDA when available.
        dtype: parameter dtype (``torch.bfloat16`` or ``"bfloat16"``); ``None`` means float32.
        hf_model: an already-loaded HF causal LM to wrap instead of loading one. It is moved to
            ``device``/``dtype`` when those are given, and compatibility mode rewrites its weights in place.
        tokenizer: the tokenizer to use (required with ``hf_model`` unless it is loadable from
            ``name_or_path``).
        compat: call ``enable_compatibility_mode()`` (HookedTransformer-equivalent weights and hook
            aliases). For RMSNorm models such as Qwen the residual stream is unchanged by it.
        check_kv_cache: make KV-cached continuation (``generate``, PatchScope's target prefix, shared-prefix
            caching) work on the installed transformers and check it against an uncached forward pass
            (:func:`lens_pivotal.kv_cache.check_kv_cache`, milliseconds).
        device_map: an accelerate device map (``"auto"``, ``"balanced"``, a dict) to split a model too large for
            one GPU across the visible GPUs, through TransformerLens' own support; instead of ``device``, and
            not with ``hf_model``. TransformerLens refuses compatibility mode when the map offloads to the CPU or
            disk (pass ``compat=False`` then). On a machine without GPUs ``"auto"`` keeps everything on the CPU.

    Raises:
        FileNotFoundError: a local path that does not exist or holds no ``config.json``.
        UnsupportedArchitectureError: an architecture TransformerLens has no adapter for.
        KVCacheError: cached continuation disagrees with the uncached forward and cannot be repaired.
    """
    name = str(name_or_path)
    if device_map is not None and (device is not None or hf_model is not None):
        raise ValueError("device_map places the model itself: give it without device= and without hf_model=")
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device) if device_map is None else None
    if hf_model is not None:
        _check_architecture(hf_model.config, f"hf_model for {name!r}")
        hf_model = hf_model.to(device=torch_device, dtype=torch_dtype if dtype is not None else None).eval()
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            _check_architecture(_local_config(path), str(path))
            name = str(path)
        elif path.exists() or _looks_like_path(name):
            raise FileNotFoundError(f"model directory {name!r} does not exist")
    if tokenizer is None:
        tokenizer = _checkpoint_tokenizer(name)
    try:
        placement = {"device": torch_device} if device_map is None else {"device_map": device_map}
        model = TransformerBridge.boot_transformers(name, dtype=torch_dtype, hf_model=hf_model, tokenizer=tokenizer, **placement)
    except ValueError as error:
        if "Could not determine supported architecture" in str(error):
            raise UnsupportedArchitectureError(f"{name}: {error}") from None
        raise
    if compat:
        model.enable_compatibility_mode(disable_warnings=True)
    model.eval()
    keep_own_tokenizer(model, tokenizer if tokenizer is not None else model.tokenizer)
    repair_kv_cache(model)
    if check_kv_cache:
        verify_kv_cache(model)
    return model
