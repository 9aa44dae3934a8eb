"""Which TransformerLens hook points of a model have hooks attached right now (``model.hooks(...)``, ``add_hook``)."""

from __future__ import annotations

from typing import Any


def attached_hook_points(model: Any) -> list[str]:
    """Every name (aliases too) of ``model``'s hook points with a forward or forward-pre hook attached, sorted: a
    user's hook (a steering vector, an ablation) can change every later block's output."""
    return sorted(name for name, point in model.hook_dict.items() if point._forward_hooks or point._forward_pre_hooks)
