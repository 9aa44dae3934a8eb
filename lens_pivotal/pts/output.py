"""Resumable JSONL output of a search: the rows file plus a ``.progress.jsonl`` record of finished problems.

A problem's rows are appended only once the problem is finished, and then its progress record. On restart,
rows of a problem without a record (killed between the two writes) and a torn last line are removed, so a
rerun continues without duplicates. The progress file's first line holds the search settings; resuming with
different settings is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lens_pivotal._io import atomic_write_text, jsonl_lines
from lens_pivotal.pts.schema import PivotalToken, write_rows

ProblemKey = tuple[str, str]


def progress_path(out: str | os.PathLike) -> Path:
    """Where the progress record of output ``out`` lives: ``name.jsonl`` → ``name.progress.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.progress.jsonl")


def _read_json_lines(path: Path) -> tuple[list[Any], bool]:
    """Parsed lines, and whether a torn (unparseable) last line was dropped. Any other bad line is an error."""
    lines = list(jsonl_lines(path))
    for number, line in enumerate(lines, start=1):
        if line.error is not None and number < len(lines):
            raise ValueError(f"{line.describe_error()}; this file was not written by an interrupted search")
    torn = bool(lines) and lines[-1].error is not None
    return [line.value for line in (lines[:-1] if torn else lines)], torn


def _read_progress(progress: Path, settings: dict[str, Any]) -> tuple[list[Any], bool]:
    """A progress file's lines (settings first) and whether a torn last line was dropped; other settings refused."""
    records, torn = _read_json_lines(progress)
    if not records or records[0].get("settings") != settings:
        stored = records[0].get("settings", {}) if records else {}
        differing = sorted(k for k in {*stored, *settings} if stored.get(k) != settings.get(k))
        raise ValueError(f"{progress} was written with other search settings (differing: {differing}); "
                         "use a new output path or the same settings")
    return records, torn


def finished_problems(out: str | os.PathLike, settings: dict[str, Any]) -> set[ProblemKey]:
    """The problems output ``out`` records as finished, read without changing it (none if it does not exist)."""
    progress = progress_path(out)
    if not progress.is_file():
        return set()
    return {_key(record) for record in _read_progress(progress, json.loads(json.dumps(settings)))[0][1:]}


def part_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` processes writes its share of output ``out``
    (``name.jsonl`` → ``name.part-1-of-4.jsonl``, with its own progress file)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.part-{rank}-of-{world_size}{out.suffix}")


def _parts(out: Path) -> list[Path]:
    """The part outputs beside ``out`` (found by their progress files: a part may have no rows yet)."""
    pattern = re.compile(rf"{re.escape(out.stem)}\.part-\d+-of-\d+\.progress\.jsonl")
    progress_files = sorted(out.parent.glob(f"{out.stem}.part-*-of-*.progress.jsonl"))
    return [path.with_name(path.name.replace(".progress.jsonl", out.suffix)) for path in progress_files if pattern.fullmatch(path.name)]


def merge_parts(out: str | os.PathLike, settings: dict[str, Any], order: Sequence[ProblemKey], reorder: bool = False) -> int:
    """Fold the part outputs of ``out`` (written by the ranks of any number of processes) into ``out``, then delete
    them; returns how many parts there were. With ``reorder``, ``out`` is put in order even without parts.

    Problems are put in ``order`` (the problem list; any others follow as found), so the result equals one
    process's output. Each problem's rows come from one source, so none is duplicated.
    """
    out = Path(out)
    parts = _parts(out)
    if not parts and not (reorder and progress_path(out).is_file()):
        return 0
    settings = json.loads(json.dumps(settings))
    finished: dict[ProblemKey, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for source in ([out] if progress_path(out).is_file() else []) + parts:
        records = _read_progress(progress_path(source), settings)[0][1:]
        rows_by_problem: dict[ProblemKey, list[dict[str, Any]]] = {}
        for row in _read_json_lines(source)[0] if source.is_file() else []:
            rows_by_problem.setdefault(_key(row), []).append(row)
        for record in records:
            finished.setdefault(_key(record), (record, rows_by_problem.get(_key(record), [])))
    rank = {key: index for index, key in enumerate(order)}
    keys = sorted(finished, key=lambda key: rank.get(key, len(rank)))
    atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for key in keys for row in finished[key][1]))
    records_text = "".join(json.dumps(finished[key][0]) + "\n" for key in keys)
    atomic_write_text(progress_path(out), json.dumps({"settings": settings}) + "\n" + records_text)
    for part in parts:
        part.unlink(missing_ok=True)
        progress_path(part).unlink()
    return len(parts)


def _key(record: dict[str, Any]) -> ProblemKey:
    return str(record["dataset_id"]), str(record["dataset_item_id"])


@dataclass
class ResumableOutput:
    """The rows file of a search and its progress record; see the module docstring."""

    path: Path
    settings: dict[str, Any]
    finished: dict[ProblemKey, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike, settings: dict[str, Any]) -> ResumableOutput:
        """Start a new output, or resume one written with the same settings.

        Raises:
            ValueError: the existing progress file has other settings, or ``path`` exists without one.
        """
        output = cls(Path(path), json.loads(json.dumps(settings)))
        progress = progress_path(output.path)
        if progress.is_file():
            output._resume(progress)
        elif output.path.exists():
            raise ValueError(f"{output.path} exists but has no progress file {progress.name}: refusing to append to it")
        else:
            atomic_write_text(progress, json.dumps({"settings": output.settings}) + "\n")
        return output

    def _resume(self, progress: Path) -> None:
        records, torn = _read_progress(progress, self.settings)
        self.finished = {_key(record): record for record in records[1:]}
        if torn:
            atomic_write_text(progress, "".join(json.dumps(record) + "\n" for record in records))
        self._drop_unfinished_rows()

    def _drop_unfinished_rows(self) -> None:
        if not self.path.is_file():
            return
        rows, torn = _read_json_lines(self.path)
        kept = [row for row in rows if _key(row) in self.finished]
        if torn or len(kept) != len(rows):
            atomic_write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))

    def is_finished(self, key: ProblemKey) -> bool:
        """Whether this problem's rows (possibly none) are already in the output."""
        return key in self.finished

    def finish_problem(self, key: ProblemKey, rows: Iterable[PivotalToken], record: dict[str, Any]) -> None:
        """Append the problem's rows, then its progress record (``record`` plus its key)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            write_rows(rows, handle)
            handle.flush()
            os.fsync(handle.fileno())
        entry = {"dataset_id": key[0], "dataset_item_id": key[1], **record}
        with progress_path(self.path).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        self.finished[key] = entry
