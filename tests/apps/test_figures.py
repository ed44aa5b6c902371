"""The Plotly figure builders: what they draw measures the data.

These are the assertions of the former SVG plotting tests (test_report_html.py
before the move to Plotly), read from the figures' data instead of pixels:
bars are the histogram's counts over its edges, lines break at NaN, notes
count what is not drawn, names are escaped, output is deterministic and small.
Tick placement and labelling are Plotly's now (checked by eye in Chromium).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarmguard.apps import figures
from swarmguard.apps.figures import (
    MAX_LINE_POINTS,
    PALETTE,
    bars_figure,
    figure_notes,
    histogram_figure,
    lines_figure,
    plain_text,
)

# --------------------------------------------------------------------------- helpers


def bars(fig):
    """(trace name, x, y) of every bar trace."""
    return [(t.name, np.asarray(t.x), np.asarray(t.y, dtype=float)) for t in fig.data if t.type == "bar"]


def n_bars(fig) -> int:
    return sum(len(x) for _, x, _ in bars(fig))


def note_text(fig) -> str:
    return "\n".join(figure_notes(fig))


def annotations(fig, name: str) -> list:
    return [a for a in fig.layout.annotations if a.name == name]


def numbers_in(value):
    """Every number in a figure's plain data (arrays included)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from numbers_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from numbers_in(v)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "fiu":
            yield from value.ravel().tolist()
        else:
            yield from numbers_in(value.tolist())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def assert_finite_json(fig) -> None:
    """No NaN or infinity anywhere in the figure: its data, axes, shapes and annotations."""
    assert all(math.isfinite(v) for v in numbers_in(fig.to_plotly_json()))
    json.loads(fig.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in the figure JSON"))


def x_range(fig) -> tuple[float, float]:
    lo, hi = fig.layout.xaxis.range
    return float(lo), float(hi)


# --------------------------------------------------------------------------- histogram


def test_one_bar_per_non_empty_bin_and_series():
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1, 5000)
    compromised = rng.normal(6, 0.5, 40)
    fig = histogram_figure({"honest": honest, "compromised": compromised}, bins=30, title="t", x_label="x")
    edges = np.linspace(min(honest.min(), compromised.min()), max(honest.max(), compromised.max()), 31)
    expected = [np.histogram(v, bins=edges)[0] for v in (honest, compromised)]
    got = bars(fig)
    assert [len(x) for _, x, _ in got] == [np.count_nonzero(c) for c in expected]
    for (_, _, y), counts in zip(got, expected, strict=True):
        assert y.tolist() == counts[counts > 0].tolist()
    assert [t.marker.color for t in fig.data] == list(PALETTE[:2])


def test_bar_heights_are_counts_and_edges_on_the_x_scale():
    data = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # bins of 0.5: counts 1, 0, 2, 4
    fig = histogram_figure({"a": data}, bins=4, title="t", x_label="x")
    (trace,) = fig.data
    assert np.asarray(trace.y).tolist() == [1, 2, 4]
    low, high = np.asarray(trace.customdata).T
    assert low.tolist() == pytest.approx([0.0, 1.0, 1.5])
    assert (high - low).tolist() == pytest.approx([0.5] * 3)
    assert np.asarray(trace.width).tolist() == pytest.approx([0.5] * 3)
    assert np.asarray(trace.x).tolist() == pytest.approx([0.25, 1.25, 1.75])


def test_log_counts_keep_single_counts_visible_and_order_heights():
    data = np.concatenate([np.zeros(1), np.ones(10), np.full(1000, 2.0)])
    fig = histogram_figure({"a": data}, bins=3, log_y=True, title="t", x_label="x")
    assert np.asarray(fig.data[0].y).tolist() == [1, 10, 1000]
    y = fig.layout.yaxis
    assert y.type == "log" and y.dtick == 1                      # ticks at 1, 10, 100, 1000
    assert y.range[0] < math.log10(1) and 3 <= y.range[1] < 3.1  # a count of 1 shows; top at a decade
    fig = histogram_figure({"a": np.zeros(2_000_000)}, log_y=True, title="t", x_label="x")
    assert 7 <= fig.layout.yaxis.range[1] < 7.1                  # up to 1e7


def test_threshold_line_sits_at_its_value_on_linear_and_log_axes():
    rng = np.random.default_rng(1)
    scores = rng.chisquare(8, 20_000)
    fig = histogram_figure({"s": scores}, vlines={"threshold": 23.2}, title="t", x_label="x")
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 23.2 and line.xref == "x"
    assert [a.text for a in annotations(fig, "vline")] == ["threshold = 23.2"]
    assert annotations(fig, "vline")[0].x == 23.2

    fig = histogram_figure({"s": scores}, log_x=True, vlines={"threshold": 23.2}, title="t", x_label="x")
    (line,) = fig.layout.shapes
    assert fig.layout.xaxis.type == "log"
    assert line.x0 == line.x1 == 23.2                                  # shapes take data values
    assert annotations(fig, "vline")[0].x == pytest.approx(math.log10(23.2))   # annotations log10


def test_threshold_outside_the_data_widens_the_axis():
    fig = histogram_figure({"s": np.arange(10.0)}, vlines={"cut": 50.0}, title="t", x_label="x")
    assert x_range(fig)[1] >= 50


@pytest.mark.parametrize(
    "lo, hi",
    [(0.0, 1.0), (-3.7, 12.1), (23.0, 23.4), (0.001, 0.0013), (-1e9, 3e9), (1e-7, 5e-7), (5.0, 1e12), (999.0, 1001.0)],
)
def test_x_axis_covers_the_data_and_counts_add_up(lo, hi):
    data = np.linspace(lo, hi, 101)
    fig = histogram_figure({"a": data}, bins=10, title="t", x_label="x")
    a, b = x_range(fig)
    assert a <= lo and b >= hi
    assert a > lo - 0.05 * (hi - lo) and b < hi + 0.05 * (hi - lo)   # not much wider than the data
    y = bars(fig)[0][2]
    assert y.sum() == 101 and y.max() >= 11     # the largest bin of 101 values in 10 bins


def test_log_x_axis_covers_the_data():
    data = np.geomspace(0.02, 3e6, 500)
    fig = histogram_figure({"a": data}, log_x=True, title="t", x_label="x")
    a, b = x_range(fig)                          # log10 units on a log axis
    assert fig.layout.xaxis.type == "log"
    assert a <= math.log10(0.02) and b >= math.log10(3e6)
    centres = np.asarray(fig.data[0].x)
    assert np.all(np.diff(np.log10(centres)) > 0) and centres.min() >= 0.02 and centres.max() <= 3e6
    narrow = np.geomspace(15, 150, 100)
    a, b = x_range(histogram_figure({"a": narrow}, log_x=True, title="t", x_label="x"))
    assert a <= math.log10(15) and b >= math.log10(150) and b - a < 1.1


def test_legend_lists_series_in_order_only_when_several():
    names = ["honest", "compromised <x>", "observers & co"]
    fig = histogram_figure({n: np.arange(5.0) + i for i, n in enumerate(names)}, title="t", x_label="x")
    assert fig.layout.showlegend is True
    assert [t.name for t in fig.data] == [plain_text(n) for n in names]
    assert fig.data[1].name == "compromised &lt;x&gt;"
    assert [t.marker.color for t in fig.data] == list(PALETTE[:3])
    assert histogram_figure({"only": np.arange(5.0)}, title="t", x_label="x").layout.showlegend is False


def test_titles_and_labels_are_escaped():
    title = '<script>alert("x")</script> & \x00 \'q\''
    fig = histogram_figure({"a<b": [1.0, 2.0], "c": [3.0]}, title=title, x_label="<x>", y_label="y&")
    assert fig.layout.title.text == '&lt;script&gt;alert("x")&lt;/script&gt; &amp; \ufffd \'q\''
    assert fig.layout.xaxis.title.text == "&lt;x&gt;" and fig.layout.yaxis.title.text == "y&amp;"
    assert fig.data[0].name == "a&lt;b"
    assert "<script" not in fig.to_json()


def test_nan_inf_huge_and_nonpositive_values_are_dropped_and_counted():
    a = np.array([1.0, 2.0, 3.0, np.nan, np.nan, np.inf, -np.inf, 1e305, -4.0, 0.0])
    fig = histogram_figure({"a": a, "b": [np.nan]}, bins=5, title="t", x_label="x")
    note = note_text(fig)
    assert "a: 4 NaN/inf dropped" in note
    assert "a: 1 beyond ±1e300 dropped" in note
    assert "b: 1 NaN/inf dropped" in note and "b: no values" in note
    assert sum(y.sum() for _, _, y in bars(fig)) == 5  # 1, 2, 3, -4, 0
    assert_finite_json(fig)
    assert annotations(fig, "notes") and "a: 4 NaN/inf dropped" in annotations(fig, "notes")[0].text

    fig = histogram_figure({"a": a}, bins=5, log_x=True, title="t", x_label="x")
    assert "a: 2 values ≤ 0 dropped (log scale)" in note_text(fig)
    assert sum(y.sum() for _, _, y in bars(fig)) == 3


def test_unusable_vlines_are_noted_not_drawn():
    fig = histogram_figure({"a": [1.0, 2.0]}, log_x=True, vlines={"nan": np.nan, "zero": 0.0, "ok": 1.5},
                           title="t", x_label="x")
    assert len(fig.layout.shapes) == 1
    assert "nan: not finite" in note_text(fig) and "zero: ≤ 0" in note_text(fig)


@pytest.mark.parametrize(
    "series",
    [
        {},
        {"a": []},
        {"a": [np.nan, np.inf]},
        {"a": [7.0]},
        {"a": [7.0] * 1000, "b": [7.0]},
        {"a": [0.0, 0.0]},
        {"a": [-1e300, 1e300]},
        {"a": [1e-300, 2e-300]},
        {"a": [5e-324, 1e-320]},
    ],
)
@pytest.mark.parametrize("log_x", [False, True])
@pytest.mark.parametrize("log_y", [False, True])
def test_edge_cases_give_a_well_formed_figure(series, log_x, log_y):
    fig = histogram_figure(series, log_x=log_x, log_y=log_y, vlines={"t": 1.0}, title="t", x_label="x")
    assert_finite_json(fig)
    a, b = x_range(fig)
    assert math.isfinite(a) and math.isfinite(b) and a < b
    has_data = any(np.any(np.isfinite(np.asarray(v, float)) & ((np.asarray(v, float) > 0) | (not log_x)))
                   for v in series.values())
    assert (n_bars(fig) > 0) == has_data
    assert bool(annotations(fig, "empty")) == (not has_data)


def test_all_equal_values_make_one_bar_around_the_value():
    fig = histogram_figure({"a": [5.0] * 10}, title="t", x_label="x")
    (trace,) = fig.data
    assert np.asarray(trace.x).tolist() == pytest.approx([5.0], abs=0.05)
    assert np.asarray(trace.y).tolist() == [10]


def test_bins_are_validated_and_capped():
    with pytest.raises(ValueError):
        histogram_figure({"a": [1.0]}, bins=0, title="t", x_label="x")
    fig = histogram_figure({"a": np.arange(100_000.0)}, bins=10**6, title="t", x_label="x")
    assert n_bars(fig) == figures.MAX_BINS


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(0, 40), elements=st.floats(allow_nan=True, allow_infinity=True)),
    st.booleans(),
    st.booleans(),
)
def test_any_float_data_gives_a_finite_figure(values, log_x, log_y):
    fig = histogram_figure({"a": values, "b": values[::2]}, log_x=log_x, log_y=log_y, bins=7,
                           vlines={"v": float(values[0]) if values.size else 1.0}, title="t", x_label="x")
    assert_finite_json(fig)
    assert all(math.isfinite(v) for v in x_range(fig))


def test_histogram_output_is_deterministic():
    def make():
        rng = np.random.default_rng(5)
        return histogram_figure({"h": rng.normal(size=1000), "c": rng.normal(3, 1, 50)}, log_y=True,
                                vlines={"t": 2.5}, title="t", x_label="x").to_json()

    assert make() == make()


def test_million_value_histogram_stays_small():
    rng = np.random.default_rng(2)
    fig = histogram_figure({"honest": rng.chisquare(8, 1_000_000), "compromised": rng.normal(60, 10, 10_000)},
                           bins=200, log_y=True, vlines={"threshold": 23.2}, title="t", x_label="x")
    assert len(fig.to_json().encode()) < 150_000


# --------------------------------------------------------------------------- lines


def runs(values) -> list[list[float]]:
    """The runs of a Plotly y list between None gaps."""
    out, cur = [], []
    for v in values:
        if v is None:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(v)
    return out + ([cur] if cur else [])


def test_nan_breaks_a_line_and_lone_points_stay_visible():
    x = np.arange(7.0)
    y = np.array([0.0, 1.0, np.nan, 3.0, 4.0, np.nan, 6.0])
    fig = lines_figure(x, {"a": y}, title="t", x_label="round", y_label="v")
    (trace,) = fig.data
    assert [len(r) for r in runs(trace.y)] == [2, 2, 1]
    assert trace.connectgaps is False and "markers" in trace.mode      # the lone point is a marker
    assert list(trace.y) == [0.0, 1.0, None, 3.0, 4.0, None, 6.0]
    assert "a: 2 NaN/inf not drawn" in note_text(fig)


def test_lines_are_drawn_in_x_order_and_bad_x_dropped():
    fig = lines_figure(np.array([2.0, np.nan, 0.0, 1.0]), {"a": np.array([20.0, 99.0, 0.0, 10.0])},
                       title="t", x_label="x", y_label="y")
    (trace,) = fig.data
    assert np.asarray(trace.x).tolist() == [0.0, 1.0, 2.0]
    assert list(trace.y) == [0.0, 10.0, 20.0]
    assert "1 points with NaN/inf x dropped" in note_text(fig)


def test_y_range_fixes_the_axis_and_counts_clipped_points():
    x = np.arange(4.0)
    fig = lines_figure(x, {"p": np.array([0.2, 1.5, -0.1, 0.5]), "q": np.full(4, 0.5)},
                       y_range=(0.0, 1.0), title="t", x_label="x", y_label="p")
    lo, hi = fig.layout.yaxis.range
    assert lo == pytest.approx(-0.02) and hi == pytest.approx(1.02)
    assert "p: 2 points outside the y range (clipped)" in note_text(fig)
    assert "q:" not in note_text(fig)
    assert [t.name for t in fig.data] == ["p", "q"] and fig.layout.showlegend is True
    assert [t.line.color for t in fig.data] == list(PALETTE[:2])


@pytest.mark.parametrize("x_lo, x_hi, y_lo, y_hi", [(0, 99, 0.1, 0.93), (1, 7, -250.0, 1e4), (1e5, 1.5e5, 1e-6, 3e-6)])
def test_line_axes_cover_the_data(x_lo, x_hi, y_lo, y_hi):
    x = np.linspace(x_lo, x_hi, 50)
    fig = lines_figure(x, {"a": np.linspace(y_lo, y_hi, 50)}, title="t", x_label="x", y_label="y")
    a, b = x_range(fig)
    assert a <= x_lo and b >= x_hi and b - a < 1.1 * (x_hi - x_lo)
    assert fig.layout.yaxis.range is None                  # y: Plotly's autorange over the data
    assert min(fig.data[0].y) == pytest.approx(y_lo) and max(fig.data[0].y) == pytest.approx(y_hi)


def test_shade_covers_its_interval():
    x = np.arange(101.0)
    fig = lines_figure(x, {"c": np.sin(x)}, shade=(40, 70), title="t", x_label="round", y_label="c")
    (shade,) = fig.layout.shapes
    assert shade.type == "rect" and shade.x0 == 40 and shade.x1 == 70 and shade.yref.startswith("y")


def test_long_lines_are_downsampled_keeping_spikes_and_gaps():
    n = 1_000_000
    x = np.arange(float(n))
    y = np.zeros(n)
    y[123_457] = 5.0
    y[600_000:650_000] = np.nan
    fig = lines_figure(x, {"a": y}, title="t", x_label="x", y_label="y")
    (trace,) = fig.data
    parts = runs(trace.y)
    assert sum(len(r) for r in parts) <= MAX_LINE_POINTS
    assert len(parts) == 2  # the gap survives
    assert max(v for r in parts for v in r) == 5.0  # the spike survives
    assert "a: 50,000 NaN/inf not drawn" in note_text(fig)
    assert fig.to_json() == lines_figure(x, {"a": y.copy()}, title="t", x_label="x", y_label="y").to_json()


def test_line_edge_cases_never_raise():
    for x, ys in [
        (np.array([]), {"a": np.array([])}),
        (np.array([1.0]), {"a": np.array([1.0])}),
        (np.arange(3.0), {"a": np.full(3, np.nan)}),
        (np.full(3, 2.0), {"a": np.full(3, 4.0)}),
        (np.arange(3.0), {}),
        (np.array([-1e300, 0, 1e300]), {"a": np.array([1e300, -1e300, 0.0])}),
    ]:
        fig = lines_figure(x, ys, title="t", x_label="x", y_label="y", y_range=(1, 1), shade=(np.nan, 1))
        assert_finite_json(fig)
        assert "shaded interval not finite, not drawn" in note_text(fig)


def test_series_length_must_match_x():
    with pytest.raises(ValueError, match="has 2 values but x has 3"):
        lines_figure(np.arange(3.0), {"a": np.arange(2.0)}, title="t", x_label="x", y_label="y")


# --------------------------------------------------------------------------- bars


def test_bars_measure_values_and_highlight_flags():
    values = np.array([0.9, 0.25, -0.5, np.nan, 0.75])
    flags = [False, True, False, True, False]
    fig = bars_figure(["s1", "s2", "s3", "s4", "s5"], values, title="t", y_label="rep", highlight=flags)
    got = bars(fig)
    assert n_bars(fig) == 4
    (name, x, y), (other, ox, oy) = got
    assert name == "highlighted" and x.tolist() == ["s2"] and y.tolist() == [0.25]
    assert fig.data[0].marker.color == PALETTE[1] and fig.data[1].marker.color == PALETTE[0]
    assert other == "other" and ox.tolist() == ["s1", "s3", "s5"] and oy.tolist() == [0.9, -0.5, 0.75]
    assert list(fig.layout.xaxis.categoryarray) == ["s1", "s2", "s3", "s4", "s5"]
    assert fig.layout.showlegend is True
    assert "values: 1 NaN/inf not drawn" in note_text(fig)


@pytest.mark.parametrize("n", [1, 2, 37, 200])
def test_one_to_two_hundred_bars_in_label_order(n):
    labels = [f"observer-{i:04d}" for i in range(n)]
    fig = bars_figure(labels, np.linspace(0, 1, n), title="t", y_label="y")
    assert n_bars(fig) == n
    assert list(fig.layout.xaxis.categoryarray) == labels and list(fig.data[0].x) == labels
    assert fig.layout.showlegend is False


def test_bar_edge_cases():
    assert annotations(bars_figure([], np.array([]), title="t", y_label="y"), "empty")
    fig = bars_figure(["a"], np.array([np.inf]), title="t", y_label="y")
    assert annotations(fig, "empty") and "values: 1 NaN/inf not drawn" in note_text(fig)
    assert_finite_json(bars_figure(["a", "b"], np.array([1e300, -1e300]), title="t", y_label="y"))
    with pytest.raises(ValueError):
        bars_figure(["a"], np.array([1.0, 2.0]), title="t", y_label="y")
    with pytest.raises(ValueError):
        bars_figure(["a"], np.array([1.0]), title="t", y_label="y", highlight=[True, False])


# --------------------------------------------------------------------------- in a real browser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_CASES = {
    "h0": ((0.0, 1.0), False), "h1": ((-3.7, 12.1), False), "h2": ((23.0, 23.4), False),
    "h3": ((999.0, 1001.0), False), "logcounts": (None, True),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The figures drawn by plotly.js in headless Chromium, offline (every host unresolvable):
    each figure's part of the resulting DOM."""
    if CHROMIUM is None:
        if os.environ.get("SWARMGUARD_REQUIRE_BROWSER"):
            pytest.fail("no Chromium on this machine, and SWARMGUARD_REQUIRE_BROWSER is set (make test installs it)")
        pytest.skip("no Chromium on this machine")
    from swarmguard.apps.report_html import render_report

    sections = []
    for name, (span, log_y) in BROWSER_CASES.items():
        data = (np.concatenate([np.zeros(1), np.ones(10), np.full(1000, 2.0)]) if span is None
                else np.linspace(*span, 101))
        sections.append((name, histogram_figure({"a": data}, bins=3 if log_y else 10, log_y=log_y, title=name,
                                                x_label="x")))
    folder = tmp_path_factory.mktemp("browser")
    page = folder / "page.html"
    page.write_text(render_report("browser check", {}, sections), encoding="utf-8")
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={folder / 'profile'}",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()], capture_output=True, timeout=180, check=False)
    dom = out.stdout.decode("utf-8", "replace")
    parts = dom.split('id="figure-')[1:]
    return {name: parts[k] for k, name in enumerate(BROWSER_CASES)} if len(parts) == len(BROWSER_CASES) else dom


def tick_values(part: str, axis: str) -> list[float]:
    labels = re.findall(rf'<g class="{axis}tick"><text[^>]*data-unformatted="([^"]*)"', part)
    return [float(t.replace("\u2212", "-").replace(",", "")) for t in labels]


def test_plotly_draws_every_figure_offline_with_nice_ticks(rendered):
    assert isinstance(rendered, dict), "not every figure was drawn"
    for name, ((lo, hi), _) in ((n, c) for n, c in BROWSER_CASES.items() if c[0] is not None):
        part = rendered[name]
        assert 'class="main-svg"' in part and 'class="trace bars"' in part
        assert part.count('class="point"') == 10          # one drawn bar per non-empty bin
        xs = tick_values(part, "x")
        assert len(xs) >= 3
        steps = np.diff(xs)
        assert np.allclose(steps, steps[0], rtol=1e-6) and steps[0] > 0
        mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]) + 1e-9)
        assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5, 10)) < 1e-6, xs
        pad = 0.03 * (hi - lo)
        assert lo - pad <= xs[0] and xs[-1] <= hi + pad and xs[0] < lo + steps[0] and xs[-1] > hi - steps[0]
    assert tick_values(rendered["logcounts"], "y") == [1, 10, 100, 1000]


def test_count_lines_get_integer_ticks_from_zero_and_a_shared_x_span():
    fig = lines_figure(np.arange(2.0, 6.0), {"alarms": np.array([0.0, 1.0, 3.0, 0.0])}, title="t", x_label="round",
                       y_label="agents (count)", y_integer=True, x_range=(0, 9))
    y = fig.layout.yaxis
    assert y.tickformat == ",d" and y.dtick == 1 and y.range[0] < 0 < 3 < y.range[1] < 3.3
    a, b = x_range(fig)
    assert a <= 0 and b >= 9
