"""The shared presentation pieces: fixed-width tables, atomic figures, offline HTML pages."""

from __future__ import annotations

import re

import pytest
from matplotlib.figure import Figure

from lens_pivotal.viz import HTMLView, format_table, save_figure


def test_table_columns_fit_their_widest_cell_and_notes_follow_the_row():
    text = format_table(["layer", "name", "p"], [["0", "alpha", "0.5"], ["12", "b", "1.0"]], align="rlr", notes=["", "<- best"])
    assert text.splitlines() == ["layer  name     p", "-----------------", "    0  alpha  0.5", "   12  b      1.0  <- best"]
    with pytest.raises(ValueError, match="3 columns"):
        format_table(["a", "b", "c"], [["1", "2"]])


def test_figures_and_pages_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    assert save_figure(figure, tmp_path / "out" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kwargs: (open(path, "wb").write(b"half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        save_figure(figure, tmp_path / "broken.png")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    page = HTMLView("<p>hi</p>", "t").save(tmp_path / "page.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>t</title>" in page and "<p>hi</p>" in page


def test_offline_html_closes_circuitsvis_mount_point_so_later_content_survives():
    import circuitsvis.tokens

    from lens_pivotal.viz import offline_html

    rendered = circuitsvis.tokens.colored_tokens(["a", "b"], [0.1, 0.2])
    assert re.search(r'<div id="circuits-vis-[^"]*"[^>]*/>', rendered.local_src)  # the upstream markup this mends
    fragment = offline_html(rendered)
    assert re.match(r'<div id="circuits-vis-[^"]*" style="margin: 15px 0;"></div>', fragment)
    assert fragment.endswith(rendered.local_src[rendered.local_src.index("/>") + 2 :])
