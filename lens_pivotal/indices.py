"""Index checking shared by every entry point that takes a layer or a token position."""

from __future__ import annotations


def resolve_index(index: object, length: int, name: str, bound: str) -> int:
    """``index`` as ``0..length-1``, negatives counting from the end.

    ``name`` and ``bound`` make the messages: ``f"{name} is out of range{bound}"`` (e.g. ``"layer 7"`` and
    ``": the model has 3 blocks"``).

    Raises:
        TypeError: ``index`` is not an int (a bool is not one here).
        IndexError: ``index`` is outside ``-length..length-1``.
    """
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"{name} must be an int, got {type(index).__name__}")
    if not -length <= index < length:
        raise IndexError(f"{name} is out of range{bound}")
    return index % length
