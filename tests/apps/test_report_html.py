"""The HTML report page: well-formed, self-contained and offline, numbers formatted, text escaped.

The figures' own tests (what the plots draw) are in test_figures.py; they were
the SVG plotting tests of this file before the report moved to Plotly.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from swarmguard.apps import report_html
from swarmguard.apps.figures import bars_figure, histogram_figure, lines_figure
from swarmguard.apps.report_html import format_value, plotly_js, render_report, write_report


class WellFormed(HTMLParser):
    """Checks that every non-void element is closed in order."""

    VOID = {"meta", "br", "hr", "img", "link", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.title = ""
        self.attrs: list[tuple[str, str | None]] = []
        self.tags: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.attrs.extend(attrs)
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.attrs.extend(attrs)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "title" and "svg" not in self.stack:
            self.title += data
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)


def check_document(doc: str) -> WellFormed:
    parser = WellFormed()
    parser.feed(doc)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    return parser


# --------------------------------------------------------------------------- document


def sample_report(n: int = 1_000_000) -> str:
    rng = np.random.default_rng(3)
    honest, compromised = rng.chisquare(8, n), rng.normal(60, 10, n // 100)
    rounds = np.arange(n, dtype=float)
    plots = [
        histogram_figure({"honest": honest, "compromised": compromised}, log_y=True, vlines={"threshold": 23.2},
                         title="Anomaly score", x_label="score"),
        histogram_figure({"honest": honest, "compromised": compromised}, log_x=True, title="Log score",
                         x_label="s"),
        lines_figure(rounds, {"recall": rng.random(n), "precision": rng.random(n)}, y_range=(0, 1),
                     title="Detection", x_label="round", y_label="fraction"),
        lines_figure(rounds, {"honest": rng.random(n), "compromised": rng.random(n), "all": rng.random(n)},
                     title="Consensus", x_label="round", y_label="p", shade=(n / 3, n / 2)),
        lines_figure(rounds, {"confidence": rng.random(n)}, title="Confidence", x_label="round", y_label="c"),
        bars_figure([f"obs-{i}" for i in range(200)], rng.random(200), highlight=[i % 9 == 0 for i in range(200)],
                    title="Reputation", y_label="weight"),
    ]
    return render_report(
        "swarmguard simulate <seed 7>",
        {"agents": 1_000_000, "seed": 7, "detection": {"precision": 0.98765, "recall": 1.0, "f1": 0.9938},
         "performance": {"throughput": 1234567.8, "latency_p99_s": 0.000123, "ok": True}},
        [(f"Plot {i} & more", p) for i, p in enumerate(plots)],
        [("False alarms <per round>", ["round", "alarms", "note"], [[1, 3, "<high>"], [2, 0.5, None]])],
    )


def without_plotly_js(doc: str) -> str:
    bundle = plotly_js()
    assert doc.count(bundle) == 1
    return doc.replace(bundle, "")


def test_report_is_well_formed_small_and_self_contained():
    doc = sample_report()
    # the page beyond the fixed plotly.js bundle (~4.8 MB) stays small over 10^6-value series
    assert len(without_plotly_js(doc).encode()) < 2_000_000
    parser = check_document(doc)
    assert parser.title == "swarmguard simulate <seed 7>"
    assert "<title>swarmguard simulate &lt;seed 7&gt;</title>" in doc
    # scripts: the inline plotly.js and one inline call per figure, none loaded from anywhere
    assert not [v for k, v in parser.attrs if k in ("src", "href")]
    assert len(parser.scripts) == 1 + 6 and parser.scripts[0] == plotly_js()
    assert doc.count('class="plotly-graph-div"') == 6
    for k, script in enumerate(parser.scripts[1:]):
        assert f'Plotly.newPlot(                        "figure-{k}"' in script
        assert not re.search(r"\bNaN\b|Infinity", script)


def test_report_loads_nothing_from_outside_the_file():
    """Offline: no element loads a resource, and no URL appears outside the plotly.js bundle."""
    doc = sample_report(1000)
    parser = check_document(doc)
    assert not {"link", "img", "iframe", "object", "embed", "audio", "video", "source", "base"} & set(parser.tags)
    loading = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background"}
    assert not [(k, v) for k, v in parser.attrs if k in loading]
    rest = without_plotly_js(doc)
    assert not re.search(r"(?i)https?:|//cdn|@import|url\(", rest)
    assert '"displaylogo": false' in rest               # no link to plotly.com on the mode bar


def test_report_formats_summary_and_escapes_tables():
    doc = sample_report(10_000)
    assert '<td class="num">1,000,000</td>' in doc
    assert '<td class="num">0.9877</td>' in doc and '<td class="num">1,234,568</td>' in doc
    assert '<td class="num">1.23e-4</td>' in doc and "<td>yes</td>" in doc
    assert '<th colspan="2" style="--depth:0">detection</th>' in doc
    assert "<caption>False alarms &lt;per round&gt;</caption>" in doc
    assert "<td>&lt;high&gt;</td>" in doc and "<td>—</td>" in doc
    assert "<h2>Plot 0 &amp; more</h2>" in doc
    assert doc == sample_report(10_000)


def test_report_without_summary_sections_or_tables():
    doc = render_report("empty", {}, [])
    check_document(doc)
    assert "<h1>empty</h1>" in doc and "<table" not in doc
    assert "<script" not in doc                      # no figure: no plotly.js either


def test_format_value():
    assert format_value(np.int64(1234567)) == "1,234,567"
    assert format_value(np.float32(0.5)) == "0.5"
    assert format_value(-0.000012345) == "-1.234e-5"
    assert format_value(2.0) == "2"
    assert format_value(1e20) == "1e20"
    assert format_value(-np.inf) == "-inf"
    assert format_value(np.bool_(False)) == "no"
    assert format_value(np.arange(3)) == "0, 1, 2"
    assert format_value(list(range(30))).endswith(", …")


# --------------------------------------------------------------------------- writing


def test_write_report_replaces_atomically(tmp_path):
    target = tmp_path / "report.html"
    write_report(target, "<p>old</p>")
    write_report(str(target), "<p>new é</p>")
    assert target.read_text(encoding="utf-8") == "<p>new é</p>"
    assert os.listdir(tmp_path) == ["report.html"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_report_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    write_report(target, "<p>old</p>")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_html.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(target, "<p>new</p>")
    assert target.read_text() == "<p>old</p>"
    assert os.listdir(tmp_path) == ["report.html"]
