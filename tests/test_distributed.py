"""Two processes on gloo write what one process writes: activation stores and PTS output, interrupted runs resumed; a
failure on one rank is raised on both, and a caller that stops reading a search early leaves no rank waiting."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_pts_search import TINY_PROBLEMS, tiny_search, without_timestamps
from test_resid_cache import expected_rows
from transformers import AutoModelForCausalLM

import lens_pivotal as lp
from lens_pivotal.distributed import all_ranks, map_in_step, on_rank_zero, shard, world
from lens_pivotal.pts.output import ResumableOutput, part_path, progress_path
from lens_pivotal.pts.schema import load_pts
from lens_pivotal.resid.store import ResidStore, StoreWriter
from lens_pivotal.testing import tiny_qwen_dir

TEXTS = [f"Text number {index} says {'more ' * index}things." for index in range(7)]
POSITIONS = [[0, -1] if index % 2 else -1 for index in range(7)]
SHARD_TEXTS = 1  # 7 shards: rank 0 writes 0, 2, 4, 6 and rank 1 writes 1, 3, 5
PROCESS_GROUP_TIMEOUT = datetime.timedelta(seconds=60)  # a rank left waiting in a collective fails after this
JOIN_TIMEOUT_S = 300  # and a run that still hangs is killed after this


class Interrupted(Exception):
    """Raised inside a rank to stop a run part-way."""


def run_ranks(tmp_path, worker, *args, world_size: int = 2) -> list[str | None]:
    """Run ``worker(*args)`` in ``world_size`` fresh processes joined in a gloo process group; per rank, the
    ``"Type: message"`` of the exception it raised, ``None`` if it finished.

    Each rank catches its own exception, so a failing rank does not get the others killed: what they raise shows."""
    init_file = tmp_path / f"rendezvous-{uuid.uuid4().hex}"
    context = torch.multiprocessing.spawn(
        _join_and_run, args=(world_size, str(init_file), worker, args), nprocs=world_size, join=False
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not context.join(timeout=max(deadline - time.monotonic(), 0)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks were still running after {JOIN_TIMEOUT_S} s")
    errors = [Path(f"{init_file}.rank{rank}.error") for rank in range(world_size)]
    return [error.read_text() if error.is_file() else None for error in errors]


def _join_and_run(rank: int, world_size: int, init_file: str, worker, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT
    )
    try:
        worker(*args)
    except Exception as error:
        Path(f"{init_file}.rank{rank}.error").write_text(f"{type(error).__name__}: {error}")
    finally:
        dist.destroy_process_group()


def _interrupt_rank_one_after(cls: type, method: str, calls: int) -> None:
    """Make ``cls.method`` raise on rank 1 once it has run ``calls`` times."""
    if world()[0] != 1:
        return
    real, count = getattr(cls, method), {"n": 0}

    def interrupted(self, *args, **kwargs):
        if count["n"] == calls:
            raise Interrupted(f"rank 1 stops before {method} number {calls + 1}")
        count["n"] += 1
        return real(self, *args, **kwargs)

    setattr(cls, method, interrupted)


def _log_work(out: str, done: list) -> None:
    Path(f"{out}.rank{world()[0]}.json").write_text(json.dumps(done))


def _cache_worker(out: str, interrupt_after: int | None = None) -> None:
    if interrupt_after is not None:
        _interrupt_rank_one_after(StoreWriter, "write_shard", interrupt_after)
    written, real_write = [], StoreWriter.write_shard

    def logged_write(self, shard, *args, **kwargs):
        written.append(shard)
        _log_work(out, written)
        return real_write(self, shard, *args, **kwargs)

    StoreWriter.write_shard = logged_write
    model = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    store = lp.cache_resid_post(model, TEXTS, POSITIONS, embeddings=True, out=out, shard_texts=SHARD_TEXTS, progress=False)
    assert store.complete  # on every rank


def _search_worker(out: str, interrupt_after: int | None = None, rank_zero_reads: int | None = None) -> None:
    """Search, logging the problems of the rows read; on rank 0 the caller reads only ``rank_zero_reads`` rows."""
    if interrupt_after is not None:
        _interrupt_rank_one_after(ResumableOutput, "finish_problem", interrupt_after)
    model = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    rows = tiny_search(model, out=out)
    if rank_zero_reads is not None and world()[0] == 0:
        rows = itertools.islice(rows, rank_zero_reads)
    _log_work(out, sorted({row.dataset_item_id for row in rows}))


def work_log(out, rank: int) -> list:
    return json.loads(Path(f"{out}.rank{rank}.json").read_text())


def test_without_a_process_group_everything_is_this_ranks():
    assert world() == (0, 1) and shard([1, 2, 3]) == [1, 2, 3] and on_rank_zero(lambda: 5) == 5
    assert all_ranks(lambda: 6) == 6 and map_in_step(lambda item: 2 * item, [1, 2, 3]) == [2, 4, 6]


@pytest.fixture(scope="module")
def one_process_store(tiny_qwen3_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "store"
    return lp.cache_resid_post(tiny_qwen3_model, TEXTS, POSITIONS, embeddings=True, out=out, shard_texts=SHARD_TEXTS, progress=False)


def assert_same_store(store: ResidStore, reference: ResidStore) -> None:
    assert store.complete and store.manifest["shards"] == reference.manifest["shards"]
    assert store.text_index.tolist() == reference.text_index.tolist()
    assert store.positions.tolist() == reference.positions.tolist()
    torch.testing.assert_close(store.load(), reference.load(), atol=1e-5, rtol=0)


def test_two_ranks_cache_what_one_process_and_plain_hf_compute(tmp_path, one_process_store, monkeypatch):
    assert run_ranks(tmp_path, _cache_worker, str(tmp_path / "store")) == [None, None]
    shares = work_log(tmp_path / "store", 0), work_log(tmp_path / "store", 1)
    assert shares == ([0, 2, 4, 6], [1, 3, 5])  # each rank its share
    store = ResidStore.open(tmp_path / "store")
    assert_same_store(store, one_process_store)
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir("qwen3"), dtype=torch.float32).eval()
    torch.testing.assert_close(store.load(), expected_rows(None, reference, TEXTS, POSITIONS), atol=1e-4, rtol=1e-4)
    # another world size reopens the finished store without computing anything
    monkeypatch.setattr(lp.resid.cache._BatchRunner, "chunk", lambda *args: pytest.fail("recomputed a finished store"))
    model = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    reopened = lp.cache_resid_post(model, TEXTS, POSITIONS, embeddings=True, out=tmp_path / "store", shard_texts=SHARD_TEXTS, progress=False)
    assert_same_store(reopened, one_process_store)


def test_a_failure_on_rank_one_stops_both_and_the_store_resumes_redoing_a_cut_short_shard(tmp_path, one_process_store):
    out = tmp_path / "store"
    errors = run_ranks(tmp_path, _cache_worker, str(out), 1)
    assert errors[1] == "Interrupted: rank 1 stops before write_shard number 2"
    assert errors[0] == f"RuntimeError: rank 1 failed: {errors[1]}"  # raised on rank 0 too, with rank 1's message
    assert work_log(out, 0) == [0, 2]  # rank 0 stopped with the shard in progress, not after its whole share
    partial = ResidStore.open(out)
    assert not partial.complete and len(partial) == 0  # the manifest lists shards only once all are in
    assert sorted(path.name for path in out.glob("shard-*")) == [f"shard-0000{shard}.safetensors" for shard in range(3)]
    cut_short = out / "shard-00002.safetensors"  # as a crash leaves a file whose data had not reached the disk
    cut_short.write_bytes(cut_short.read_bytes()[: cut_short.stat().st_size // 2])
    assert run_ranks(tmp_path, _cache_worker, str(out)) == [None, None]
    assert (work_log(out, 0), work_log(out, 1)) == ([2, 4, 6], [3, 5])  # whole shards kept, the cut-short one redone
    assert_same_store(ResidStore.open(out), one_process_store)
    assert not [path for path in out.iterdir() if path.name.startswith(".")], "no temporary files left"


@pytest.fixture(scope="module")
def one_process_search(tiny_qwen3_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "rows.jsonl"
    list(tiny_search(tiny_qwen3_model, out=out))
    return out


def progress_records(out) -> list[dict]:
    lines = [json.loads(line) for line in progress_path(out).read_text().splitlines()]
    return [lines[0]] + [{key: value for key, value in record.items() if key != "seconds"} for record in lines[1:]]


def assert_same_search(out, reference) -> None:
    assert without_timestamps(load_pts(out)) == without_timestamps(load_pts(reference))
    assert progress_records(out) == progress_records(reference)
    assert not list(out.parent.glob("*.part-*")), "the parts are merged and removed"


def test_two_ranks_search_what_one_process_finds_though_one_caller_stops_reading_early(tmp_path, one_process_search):
    assert len(load_pts(one_process_search)) > 0 and len(TINY_PROBLEMS) == 3
    assert run_ranks(tmp_path, _search_worker, str(tmp_path / "rows.jsonl"), None, 1) == [None, None]
    searched = work_log(tmp_path / "rows.jsonl", 0), work_log(tmp_path / "rows.jsonl", 1)
    assert searched == (["0"], ["1"])  # problems of the rows read: rank 0's caller read one row
    assert_same_search(tmp_path / "rows.jsonl", one_process_search)  # rank 0 searched problem 2 all the same


@pytest.mark.parametrize("resume_with", [2, 1])
def test_an_interrupted_two_rank_search_resumes(tmp_path, one_process_search, tiny_qwen3_model, resume_with):
    out = tmp_path / "rows.jsonl"
    errors = run_ranks(tmp_path, _search_worker, str(out), 0)
    assert errors[1] == "Interrupted: rank 1 stops before finish_problem number 1"
    assert errors[0] == f"RuntimeError: rank 1 failed: {errors[1]}"
    assert progress_path(part_path(out, 1, 2)).is_file() and not out.exists()
    if resume_with == 2:
        assert run_ranks(tmp_path, _search_worker, str(out)) == [None, None]
    else:
        list(tiny_search(tiny_qwen3_model, out=out))
    assert_same_search(out, one_process_search)


def test_torchrun_runs_the_cache_command_one_worker_per_process(tmp_path, one_process_store):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": text, "positions": spec}) + "\n" for text, spec in zip(TEXTS, POSITIONS)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lens_pivotal", "cache",
               str(texts), "--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu", "--embeddings",
               "--shard-texts", str(SHARD_TEXTS), "--out", str(tmp_path / "store")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_store(ResidStore.open(tmp_path / "store"), one_process_store)


def _mismatched_store_worker(out: str) -> None:
    model = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    lp.cache_resid_post(model, TEXTS[:2], [0, 0], out=out, progress=False)


def test_a_failure_on_rank_zero_is_raised_on_every_rank(tmp_path, tiny_qwen3_model):
    out = tmp_path / "store"
    lp.cache_resid_post(tiny_qwen3_model, TEXTS, POSITIONS, out=out, progress=False)
    errors = run_ranks(tmp_path, _mismatched_store_worker, str(out))
    assert errors[0].startswith("StoreMismatchError: ") and "other inputs" in errors[0]
    assert errors[1] == f"RuntimeError: rank 0 failed: {errors[0]}"
