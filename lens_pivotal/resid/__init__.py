"""Reading the residual stream: ``cache_resid_post`` (batched, early-stopped, shared prefixes), the HF fast path it
runs on, and the on-disk store (safetensors shards + a JSON manifest)."""

from lens_pivotal.resid.cache import Layout, cache_resid_post, resolve_layers
from lens_pivotal.resid.fastpath import hf_fast_path
from lens_pivotal.resid.store import ResidStore, StoreMismatchError

__all__ = ["Layout", "ResidStore", "StoreMismatchError", "cache_resid_post", "hf_fast_path", "resolve_layers"]
