"""cache_resid_post: parity with Hugging Face hidden states, layouts, early stopping, the store, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import hf_token_ids
from transformers import AutoModelForCausalLM

import lens_pivotal as lp
from lens_pivotal.resid import cache as cache_module
from lens_pivotal.resid.store import ResidStore, StoreMismatchError, StoreWriter
from lens_pivotal.testing import tiny_llama_dir, tiny_qwen_dir

TEXTS = [
    "The capital of France is Paris.",
    "2 + 2 =",
    "A much longer text, so that padding matters: one, two, three, four, five, six.",
    "Hi",
]
POSITIONS = [[0, -1], -1, [3, 7, -2], 0]


def hf_states(reference, ids: torch.Tensor) -> list[torch.Tensor]:
    """HF hidden states with the last one replaced by the last block's own output (before the final norm)."""
    captured = {}

    def grab(module, inputs, output):
        captured["last"] = output[0] if isinstance(output, tuple) else output

    handle = reference.model.layers[-1].register_forward_hook(grab)
    try:
        with torch.no_grad():
            states = list(reference(ids, output_hidden_states=True).hidden_states)
    finally:
        handle.remove()
    states[-1] = captured["last"]
    return [state[0] for state in states]


def expected_rows(model, reference, texts, positions) -> torch.Tensor:
    """[n_layers + 1, n_rows, d_model] from one unpadded HF forward per text."""
    rows = []
    for text, spec in zip(texts, positions):
        ids = hf_token_ids(reference, text) if isinstance(text, str) else text.unsqueeze(0)
        states = hf_states(reference, ids)
        for position in [spec] if isinstance(spec, int) else spec:
            rows.append(torch.stack([state[position] for state in states]))
    return torch.stack(rows, dim=1)


def model_directory(arch: str):
    if arch == "embedded":
        from lens_pivotal.embedded import embedded_model_dir

        return embedded_model_dir()
    return tiny_llama_dir() if arch == "llama" else tiny_qwen_dir(arch)


def assert_rows_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Max abs diff ≤ 1e-4 per layer, or 1e-5 of the layer's largest value where that is larger.

    SmolLM2 keeps residual entries near 25,000 (attention-sink tokens), where one float32 rounding step is
    already 0.002; folding norms into weights and batching reorder sums, so a fixed 1e-4 cannot hold there.
    """
    scale = expected.abs().amax(dim=(1, 2))
    for layer, (got, want) in enumerate(zip(actual, expected)):
        atol = max(1e-4, 1e-5 * scale[layer].item())
        assert (got - want).abs().max().item() <= atol, f"layer slot {layer}: diff above {atol:g}"


@pytest.fixture(scope="module", params=["qwen3", "qwen2", "llama", pytest.param("embedded", marks=pytest.mark.slow)])
def model_and_reference(request):
    """Our model and an independent HF copy of it; the copy's attention kernel follows the test's choice."""
    directory = model_directory(request.param)
    reference = AutoModelForCausalLM.from_pretrained(directory).eval()
    return lp.load_model(directory, device="cpu"), reference


@pytest.fixture(params=[True, False], ids=["sdpa", "bridge-eager"])
def fast_path(request, model_and_reference):
    _, reference = model_and_reference
    reference.config._attn_implementation = "sdpa" if request.param else "eager"
    return request.param


@pytest.fixture(scope="module")
def qwen3():
    return lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_matches_hf_hidden_states_for_mixed_lengths(model_and_reference, fast_path, padding_side):
    model, reference = model_and_reference
    acts = lp.cache_resid_post(
        model, TEXTS, POSITIONS, embeddings=True, batch_size=3, padding_side=padding_side,
        fast_path=fast_path, progress=False,
    )
    expected = expected_rows(model, reference, TEXTS, POSITIONS)
    assert acts.shape == (model.cfg.n_layers + 1, 7, model.cfg.d_model)
    assert_rows_close(acts, expected)


def test_bos_follows_the_model_and_token_inputs_are_used_as_given(model_and_reference, fast_path):
    model, reference = model_and_reference
    bos = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else model.tokenizer.pad_token_id
    plain = model.tokenizer("The capital of France is", return_tensors="pt", add_special_tokens=False).input_ids[0]
    with_bos = torch.cat([torch.tensor([bos]), plain])
    texts = [plain, with_bos]
    acts = lp.cache_resid_post(model, texts, [-1, -1], embeddings=True, fast_path=fast_path, progress=False)
    assert_rows_close(acts, expected_rows(model, reference, texts, [-1, -1]))
    assert not torch.allclose(acts[-1, 0], acts[-1, 1]), "a BOS token must change the last position's state"
    string_tokens = model.to_tokens("The capital of France is")[0]
    assert (string_tokens[0] == bos) == bool(model.cfg.default_prepend_bos)


SHARED = (
    "Question: Sam has three apples and buys four more apples at the market on a sunny day. "
    "How many apples does Sam have now? Think step by step before you answer. Answer:"
)
SHARED_TEXTS = [SHARED + " Seven.", SHARED + " He has 3 + 4 = 7 apples.", SHARED + " 7", "Unrelated short text."]
SHARED_POSITIONS = [[2, -1], [-3, 5, -1], [-1], [0, -1]]


def test_shared_prefixes_match_hf_hidden_states(model_and_reference, fast_path):
    model, reference = model_and_reference
    acts = lp.cache_resid_post(
        model, SHARED_TEXTS, SHARED_POSITIONS, embeddings=True, batch_size=2, padding_side="left",
        fast_path=fast_path, share_prefixes=True, progress=False,
    )
    assert_rows_close(acts, expected_rows(model, reference, SHARED_TEXTS, SHARED_POSITIONS))


def test_shared_prefixes_run_once(qwen3):
    def tokens_run(share: bool) -> int:
        shapes = []
        with qwen3.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: shapes.append(t.shape[0] * t.shape[1]))]):
            lp.cache_resid_post(qwen3, SHARED_TEXTS, SHARED_POSITIONS, share_prefixes=share, batch_size=4, progress=False)
        return sum(shapes)

    prefix = len(qwen3.to_tokens(SHARED)[0])
    assert prefix >= cache_module.MIN_SHARED_PREFIX
    assert tokens_run(False) - tokens_run(True) >= 2 * (prefix - 1) - 4


def test_layer_subset_is_in_requested_order(qwen3):
    full = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, progress=False)
    subset = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[2, 0, -2], progress=False)
    torch.testing.assert_close(subset, full[[2, 0, 1]], atol=0, rtol=0)


def test_stops_after_the_deepest_requested_block(qwen3):
    fired = []
    hooks = [("blocks.1.hook_resid_pre", lambda t, hook: fired.append(hook.name)), ("ln_final.hook_normalized", lambda t, hook: fired.append(hook.name))]
    with qwen3.hooks(fwd_hooks=hooks):
        lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[0], progress=False)
    assert fired == []
    assert len(qwen3.blocks[1].hook_resid_pre.fwd_hooks) == 0, "our hooks must be removed afterwards"


def test_composes_with_a_user_hook(qwen3):
    def ablate(resid, hook):
        return torch.zeros_like(resid)

    clean = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[0, 1], progress=False)
    with qwen3.hooks(fwd_hooks=[("blocks.0.hook_resid_post", ablate)]):
        ablated = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[0, 1], progress=False)
    assert torch.count_nonzero(ablated[0]) == 0
    assert not torch.allclose(ablated[1], clean[1])


def test_batch_size_and_dtype_do_not_change_rows(qwen3):
    one = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, batch_size=1, progress=False)
    many = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, batch_size=16, dtype=torch.float16, progress=False)
    assert many.dtype == torch.float16
    torch.testing.assert_close(many.float(), one, atol=2e-2, rtol=1e-2)


def test_store_matches_memory_and_reopens_without_computing(qwen3, tmp_path, monkeypatch):
    in_memory = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, embeddings=True, progress=False)
    store = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, embeddings=True, out=tmp_path / "s", shard_texts=3, progress=False)
    assert isinstance(store, ResidStore) and store.complete and len(store) == 7
    # shards batch texts differently, which moves float32 sums by rounding only
    torch.testing.assert_close(store.load(), in_memory, atol=1e-5, rtol=0)
    torch.testing.assert_close(store.layer(2), store.load()[3], atol=0, rtol=0)  # slot 0 holds the embeddings
    assert store.text_index.tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert store.positions[-1].item() == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["hook_names"][0] == "blocks.0.hook_resid_pre" and manifest["n_rows"] == 7
    assert manifest["model_name"] == qwen3.cfg.model_name and manifest["dtype"] == "float32"

    monkeypatch.setattr(cache_module._BatchRunner, "batch", no_compute)
    reopened = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, embeddings=True, out=tmp_path / "s", shard_texts=3, progress=False)
    torch.testing.assert_close(reopened.load(), store.load(), atol=0, rtol=0)


def test_store_resumes_after_an_interrupt(qwen3, tmp_path, monkeypatch):
    texts, positions = TEXTS * 3, POSITIONS * 3
    in_memory = lp.cache_resid_post(qwen3, texts, positions, progress=False)
    real_write = StoreWriter.write_shard
    calls = {"n": 0}

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        lp.cache_resid_post(qwen3, texts, positions, out=tmp_path / "s", shard_texts=2, progress=False)
    partial = ResidStore.open(tmp_path / "s")
    assert not partial.complete and len(partial.manifest["shards"]) == 2
    monkeypatch.setattr(StoreWriter, "write_shard", real_write)
    store = lp.cache_resid_post(qwen3, texts, positions, out=tmp_path / "s", shard_texts=2, progress=False)
    assert store.complete and len(store.manifest["shards"]) == 6
    torch.testing.assert_close(store.load(), in_memory, atol=1e-5, rtol=0)
    expected_index = [i for i, spec in enumerate(positions) for _ in ([spec] if isinstance(spec, int) else spec)]
    assert store.text_index.tolist() == expected_index
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")], "no temporary files left"


def test_store_refuses_other_inputs(qwen3, tmp_path):
    lp.cache_resid_post(qwen3, TEXTS, POSITIONS, out=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatchError, match="other inputs"):
        lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[0], out=tmp_path / "s", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        lp.cache_resid_post(qwen3, TEXTS, POSITIONS, out=tmp_path / "other", progress=False)


def no_compute(*args, **kwargs):
    raise AssertionError("a finished store must not be recomputed")


def scale_mlp_out_weight(model, block: int, factor: float) -> None:
    """Multiply a plain HF model's (or a bridge's wrapped HF model's) ``down_proj`` of one block in place."""
    hf_model = getattr(model, "original_model", model)
    with torch.no_grad():
        hf_model.model.layers[block].mlp.down_proj.weight.mul_(factor)


def test_a_store_of_weights_changed_in_place_is_refused_and_overwrite_recomputes_it(qwen3, tmp_path, monkeypatch):
    model = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir("qwen3"), dtype=torch.float32).eval()
    settings = {"layers": [1, 0], "embeddings": True, "out": tmp_path / "s", "progress": False}
    before = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, **settings).load()
    with monkeypatch.context() as patched:
        patched.setattr(cache_module._BatchRunner, "batch", no_compute)
        lp.cache_resid_post(model, TEXTS, POSITIONS, **settings)  # a fresh load of the same weights reopens it
    scale_mlp_out_weight(model, 0, 1.5)
    scale_mlp_out_weight(reference, 0, 1.5)
    with pytest.raises(StoreMismatchError, match="other inputs .weights fingerprint: stored [0-9a-f]{12}…, now [0-9a-f]{12}….: pass a new directory, or overwrite=True"):
        lp.cache_resid_post(model, TEXTS, POSITIONS, **settings)
    store = lp.cache_resid_post(model, TEXTS, POSITIONS, **settings, overwrite=True)
    hf = expected_rows(model, reference, TEXTS, POSITIONS)  # hidden_states[l + 1] is block l's output
    assert_rows_close(store.load(), hf[[0, 2, 1]])
    assert not torch.allclose(store.layer(0), before[2], atol=1e-3), "the edit must move block 0's output"
    monkeypatch.setattr(cache_module._BatchRunner, "batch", no_compute)
    assert lp.cache_resid_post(model, TEXTS, POSITIONS, **settings).complete  # the edited weights reopen it


def test_store_layer_is_by_block_number_or_hook_name_whatever_the_slot_order(qwen3, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir("qwen3"), dtype=torch.float32).eval()
    store = lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[1, 0], embeddings=True, out=tmp_path / "s", progress=False)
    hf = expected_rows(qwen3, reference, TEXTS, POSITIONS)
    assert_rows_close(store.layer(0)[None], hf[[1]])
    assert_rows_close(store.layer(1)[None], hf[[2]])
    assert_rows_close(store.layer("blocks.0.hook_resid_pre")[None], hf[[0]])
    with pytest.raises(KeyError, match=r"holds no blocks.2.hook_resid_post: it holds blocks \[1, 0\] and blocks.0.hook_resid_pre"):
        store.layer(2)


def test_a_hook_attached_to_the_model_changes_the_key(qwen3, tmp_path):
    lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[1], out=tmp_path / "s", progress=False)

    def ablate(resid, hook):
        return torch.zeros_like(resid)

    with qwen3.hooks(fwd_hooks=[("blocks.0.hook_resid_post", ablate)]):
        with pytest.raises(StoreMismatchError, match=r'hooks attached: stored \[\], now \[.*"blocks.0.hook_resid_post"'):
            lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[1], out=tmp_path / "s", progress=False)
    qwen3.add_hook("blocks.1.hook_mlp_out", ablate)
    try:
        with pytest.raises(StoreMismatchError, match=r'hooks attached: stored \[\], now \[.*"blocks.1.hook_mlp_out"'):
            lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[1], out=tmp_path / "s", progress=False)
    finally:
        qwen3.reset_hooks()
    assert lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[1], out=tmp_path / "s", progress=False).complete


def test_compatibility_mode_on_and_off_are_different_stores(qwen3, tmp_path):
    lp.cache_resid_post(qwen3, TEXTS, POSITIONS, out=tmp_path / "s", progress=False)
    plain = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu", compat=False)
    with pytest.raises(StoreMismatchError, match="compatibility mode: stored true, now false"):
        lp.cache_resid_post(plain, TEXTS, POSITIONS, out=tmp_path / "s", progress=False)


def test_other_library_versions_are_refused_by_name(qwen3, tmp_path, monkeypatch):
    lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[0], out=tmp_path / "s", progress=False)
    installed = cache_module._version
    monkeypatch.setattr(cache_module, "_version", lambda name: "99.0" if name == "transformers" else installed(name))
    with pytest.raises(StoreMismatchError, match=r"\(versions transformers: stored [^,]+, now 99.0\)"):
        lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[0], out=tmp_path / "s", progress=False)


def test_the_manifest_records_each_key_component(qwen3, tmp_path):
    lp.cache_resid_post(qwen3, TEXTS, POSITIONS, layers=[2, 0], dtype=torch.float16, out=tmp_path / "s", progress=False)
    key = json.loads((tmp_path / "s" / "manifest.json").read_text())["key"]
    assert key["model_name"] == qwen3.cfg.model_name and len(key["weights_fingerprint"]) == 64
    assert key["compatibility_mode"] is True and key["hooks_attached"] == []
    assert key["parameter_dtypes"] == ["float32"] and key["activation_dtype"] == "float16"
    assert key["hooks_read"] == ["blocks.2.hook_resid_post", "blocks.0.hook_resid_post"]
    assert key["versions"]["torch"] == torch.__version__ and set(key["versions"]) == set(cache_module.KEYED_LIBRARIES)


@pytest.mark.parametrize(
    ("texts", "positions", "kwargs", "error", "message"),
    [
        (["Hi"], [5], {}, IndexError, r"position 5 is out of range for text 0, which has \d+ tokens"),
        (["Hi", "Hello there"], [0, -40], {}, IndexError, "for text 1"),
        ([], [], {}, ValueError, "texts is empty"),
        (["a", "b"], [0], {}, ValueError, "2 texts, 1 positions"),
        (["a"], [[]], {}, TypeError, r"positions\[0\] must be an int or a non-empty list"),
        (["a"], ["0"], {}, TypeError, r"positions\[0\]"),
        (["a"], [0.5], {}, TypeError, r"positions\[0\]"),
        ("a single string", [0], {}, TypeError, "wrap a single text in a list"),
        ([torch.tensor([], dtype=torch.long)], [0], {}, ValueError, "text 0 has no tokens"),
        ([torch.ones(3)], [0], {}, ValueError, "1-D integer ids"),
        (["a"], [0], {"layers": [3]}, IndexError, "layer 3 is out of range: the model has 3 blocks"),
        (["a"], [0], {"layers": [0, 0]}, ValueError, "repeats"),
        (["a"], [0], {"layers": [1.5]}, TypeError, "layer 1.5 must be an int, got float"),
        (["a"], [0], {"tokenization": "hf"}, ValueError, r"tokenization must be one of \('tokenizer', 'transformer_lens'\)"),
        (["a"], [0], {"padding_side": "middle"}, ValueError, "padding_side"),
        (["a"], [0], {"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_input_errors(qwen3, texts, positions, kwargs, error, message):
    with pytest.raises(error, match=message):
        lp.cache_resid_post(qwen3, texts, positions, progress=False, **kwargs)


def test_bad_input_writes_nothing(qwen3, tmp_path):
    with pytest.raises(IndexError):
        lp.cache_resid_post(qwen3, ["Hi"], [9], out=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
