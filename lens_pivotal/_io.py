"""Files, written so a reader never sees half of one, and JSONL read with errors that name the line.

Every file lens_pivotal writes goes through :func:`atomic_file` (or :func:`atomic_dir` for a directory): a unique
scratch name beside the target, the usual file modes, then a rename; a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch path (same folder and suffix) that becomes ``path`` only if the block finishes.

    The scratch file is flushed to disk before the rename and the folder after it, so a crash (or power loss) leaves
    the old file or the whole new one, never a renamed file whose data had not reached the disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(scratch)
        with open(scratch, "rb+") as handle:
            os.fsync(handle.fileno())
        _give_default_permissions(Path(scratch))
        os.replace(scratch, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


def _fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the system lets a folder be opened (not Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as scratch:
        scratch.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``target`` only if the block finishes.

    A ``target`` that exists and is not empty is refused (``FileExistsError``, before the block runs) unless
    ``overwrite``; then it is replaced whole: the old copy is moved aside, the new one renamed in, the old deleted.
    A reader sees the old directory or the new one, never a mix, and a failure leaves the old one in place.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    with _scratch_dir(target) as scratch:
        yield scratch
        _give_default_permissions(scratch)
        _replace_dir(scratch, target)


def refuse_existing(target: str | os.PathLike, overwrite: bool) -> None:
    """Raise ``FileExistsError`` if ``target`` exists and is not an empty directory, unless ``overwrite``: the check
    :func:`atomic_dir` makes, for callers that want it before a long computation."""
    if not overwrite and _is_nonempty_dir_or_file(Path(target)):
        raise FileExistsError(f"{target} already exists: pass overwrite=True to replace it, or choose a new path")


@contextlib.contextmanager
def atomic_cache_dir(target: str | os.PathLike) -> Iterator[Path]:
    """:func:`atomic_dir` for a content-addressed cache entry: if another process finished ``target`` first (the
    same content, by its key), its copy is kept and ours is discarded."""
    target = Path(target)
    with _scratch_dir(target) as scratch:
        yield scratch
        _give_default_permissions(scratch)
        try:
            os.replace(scratch, target)
        except OSError:
            if not target.is_dir():
                raise


@contextlib.contextmanager
def _scratch_dir(target: Path) -> Iterator[Path]:
    """A scratch directory beside ``target``, removed whatever happens (once renamed, there is nothing to remove)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _replace_dir(scratch: Path, target: Path) -> None:
    """Rename ``scratch`` to ``target``, moving an existing ``target`` aside first and deleting it after."""
    if not _is_nonempty_dir_or_file(target):
        os.replace(scratch, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent)) / target.name
    os.replace(target, aside)
    try:
        os.replace(scratch, target)
    except BaseException:
        os.replace(aside, target)
        raise
    finally:
        shutil.rmtree(aside.parent, ignore_errors=True)


def _is_nonempty_dir_or_file(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir()) or path.exists() and not path.is_dir()


def _give_default_permissions(root: Path) -> None:
    """The modes a plain ``open``/``mkdir`` would have given (``tempfile`` makes scratch files private to us)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@dataclass
class JsonLine:
    """One non-blank line of a JSONL file: where it is (``path:number``), and its value or why it is not JSON."""

    where: str
    number: int
    value: Any = None
    error: json.JSONDecodeError | None = None

    def describe_error(self) -> str:
        """``"path:number: not valid JSON (reason at column c)"``."""
        assert self.error is not None
        return f"{self.where}: not valid JSON ({self.error.msg} at column {self.error.colno})"


def jsonl_lines(path: str | os.PathLike) -> Iterator[JsonLine]:
    """Every non-blank line of ``path``, parsed; a line that is not JSON carries its error instead of raising."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield JsonLine(f"{path}:{number}", number, json.loads(line))
            except json.JSONDecodeError as error:
                yield JsonLine(f"{path}:{number}", number, error=error)

