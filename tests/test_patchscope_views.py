"""The PatchScope token grid view: self-contained HTML holding the decoded tokens, with no network use."""

from __future__ import annotations

import html
import re
import socket

import pytest

from lens_pivotal.patchscope import decode_positions, token_grid_view


@pytest.fixture(scope="module")
def grid(tiny_qwen3_model):
    return decode_positions(tiny_qwen3_model, "The capital of France", layers=[0, 1, 2])


def test_saved_page_holds_the_tokens_and_no_external_script(grid, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("rendering must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    view = token_grid_view(grid)
    page = view.save(tmp_path / "grid.html").read_text(encoding="utf-8")
    assert view._repr_html_() in page
    for token in [" capital", " France", *grid.top_tokens[2]]:
        assert html.escape(token.replace("\n", "\\n")) in page
    assert "ColoredTokensMulti" in page and "CircuitsVis.render" in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page), "every script is inline"
    assert "unpkg" not in page and "cdn.jsdelivr" not in page and "https://unpkg" not in page
    assert page.count("<tr>") == 1 + len(grid.layers)


def test_save_replaces_atomically(grid, tmp_path):
    target = tmp_path / "sub" / "grid.html"
    token_grid_view(grid, title="title-one-7f3a").save(target)
    token_grid_view(grid, title="second <b>").save(target)
    page = target.read_text(encoding="utf-8")
    assert "second &lt;b&gt;" in page and "title-one-7f3a" not in page
    assert [p.name for p in target.parent.iterdir()] == ["grid.html"]
