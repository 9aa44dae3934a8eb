"""circuitsvis views of probe scores: self-contained pages holding the tokens, rendered with no network use."""

from __future__ import annotations

import html
import re
import socket

import pytest
import torch

from lens_pivotal.probes.scores import GeneratedScores, TokenScores
from lens_pivotal.probes.views import generated_view, token_scores_view

TOKENS = ["Sam", " has", " 3", " apples", " because", "\n"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("rendering must not touch the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def scores(n_layers: int) -> TokenScores:
    values = torch.linspace(0, 1, n_layers * len(TOKENS)).view(n_layers, len(TOKENS))
    return TokenScores(TOKENS, list(range(len(TOKENS))), values, list(range(n_layers)), [str(i + 10) for i in range(n_layers)])


def assert_self_contained(page: str) -> None:
    assert "CircuitsVis.render" in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page), "every script is inline"
    assert "unpkg.com" not in page and "cdn.jsdelivr" not in page


def test_one_layer_is_colored_tokens(tmp_path):
    view = token_scores_view(scores(1))
    page = view.save(tmp_path / "one.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "CircuitsVis.ColoredTokens," in page and "layer 10" in page
    assert '"tokens": ["Sam", " has", " 3", " apples", " because", "\\n"]' in page
    assert view._repr_html_() in page


def test_several_layers_are_colored_tokens_multi(tmp_path):
    page = token_scores_view(scores(3), title="<three>").save(tmp_path / "multi.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "CircuitsVis.ColoredTokensMulti," in page and all(f"layer {label}" in page for label in ("10", "11", "12"))
    assert html.escape("<three>") in page and "<three>" not in page


def test_generated_view_lists_the_flagged_tokens(tmp_path):
    generated = GeneratedScores([1, 2], [" so", " 7", "."], [5, 6, 7], torch.tensor([0.2, 0.9, 0.6]), 0.8, "13")
    page = generated_view(generated).save(tmp_path / "generated.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "flagged at ≥ 0.8: &#x27; 7&#x27;" in page and "layer 13" in page
