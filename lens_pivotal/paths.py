"""Where lens_pivotal keeps converted models and other rebuildable files, and how it writes them safely."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

CACHE_ENV_VAR = "LENS_PIVOTAL_CACHE"


def user_cache_dir() -> Path:
    """The cache root: ``$LENS_PIVOTAL_CACHE`` if set, else ``~/.cache/lens_pivotal``."""
    root = os.environ.get(CACHE_ENV_VAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lens_pivotal"


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``target`` only if the block finishes.

    A crash or an exception leaves no half-written ``target`` behind. If another process
    finished ``target`` first, its copy is kept and ours is discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch
        _give_default_permissions(scratch)
        try:
            os.replace(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _give_default_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _give_default_permissions(root: Path) -> None:
    """The modes a plain ``open``/``mkdir`` would have given (``tempfile`` makes scratch files private to us)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
