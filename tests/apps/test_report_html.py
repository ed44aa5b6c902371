"""The HTML report renderer: well-formed output whose marks measure the data."""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarmguard.apps import report_html
from swarmguard.apps.report_html import (
    MAX_LINE_POINTS,
    PALETTE,
    format_value,
    render_report,
    svg_bars,
    svg_histogram,
    svg_lines,
    write_report,
)

NUMERIC_ATTRS = ("x", "y", "width", "height", "x1", "x2", "y1", "y2", "cx", "cy", "r", "d",
                 "transform", "viewBox", "fill-opacity", "stroke-width")


# --------------------------------------------------------------------------- helpers


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in e.get("class", "").split()]


def texts(root: ET.Element, cls: str) -> list[str]:
    return ["".join(e.itertext()) for e in by_class(root, cls)]


def label_value(label: str) -> float:
    return float(label.replace(",", ""))


def ticks(root: ET.Element, axis: str) -> list[tuple[float, float]]:
    """(value, pixel) of each tick label on the x or y axis."""
    pos = "x" if axis == "x" else "y"
    shift = 0.0 if axis == "x" else -4.0  # y labels sit 4px below their tick
    return [(label_value("".join(e.itertext())), float(e.get(pos)) + shift)
            for e in by_class(root, f"{axis}tick-label")]


def mapper(root: ET.Element, axis: str, *, log: bool = False):
    """Data value -> pixel, recovered from the first and last tick labels."""
    t = ticks(root, axis)
    (v0, p0), (v1, p1) = t[0], t[-1]
    if log:
        v0, v1 = math.log10(v0), math.log10(v1)
    return lambda v: p0 + ((math.log10(v) if log else v) - v0) / (v1 - v0) * (p1 - p0)


def assert_nice(values: list[float]) -> float:
    """Evenly spaced ticks with a step of 1, 2, 2.5 or 5 times a power of ten; returns the step."""
    assert len(values) >= 2
    steps = np.diff(values)
    step = float(steps[0])
    assert step > 0
    assert np.allclose(steps, step, rtol=1e-6)
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5, 10)) < 1e-6, values
    for v in values:  # every tick a whole multiple of the step
        assert abs(v / step - round(v / step)) < 1e-6
    return step


def assert_no_nonfinite_numbers(root: ET.Element) -> None:
    for e in root.iter():
        for name in NUMERIC_ATTRS:
            value = e.get(name)
            if value is None:
                continue
            assert not re.search(r"nan|inf", value, re.IGNORECASE), (name, value)
            for number in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", value):
                assert math.isfinite(float(number))


def note_text(root: ET.Element) -> str:
    return "\n".join(texts(root, "note"))


class WellFormed(HTMLParser):
    """Checks that every non-void element is closed in order."""

    VOID = {"meta", "br", "hr", "img", "link", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.title = ""
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.attrs.extend(attrs)
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


def check_document(doc: str) -> WellFormed:
    parser = WellFormed()
    parser.feed(doc)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    return parser


# --------------------------------------------------------------------------- histogram


def test_one_bar_per_non_empty_bin_and_series():
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1, 5000)
    compromised = rng.normal(6, 0.5, 40)
    svg = svg_histogram({"honest": honest, "compromised": compromised}, bins=30, title="t", x_label="x")
    root = parse(svg)
    edges = np.linspace(min(honest.min(), compromised.min()), max(honest.max(), compromised.max()), 31)
    expected = [np.count_nonzero(np.histogram(v, bins=edges)[0]) for v in (honest, compromised)]
    bars = by_class(root, "bar")
    assert len(bars) == sum(expected)
    assert [sum(b.get("fill") == colour for b in bars) for colour in PALETTE[:2]] == expected


def test_bar_heights_proportional_to_counts_and_edges_on_the_x_scale():
    data = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # bins of 0.5: counts 1, 0, 2, 4
    root = parse(svg_histogram({"a": data}, bins=4, title="t", x_label="x"))
    bars = by_class(root, "bar")
    assert len(bars) == 3
    y_of = mapper(root, "y")
    x_of = mapper(root, "x")
    per_count = y_of(0) - y_of(1)
    assert per_count > 0
    for bar, count, left in zip(bars, [1, 2, 4], [0.0, 1.0, 1.5], strict=True):
        assert float(bar.get("height")) == pytest.approx(count * per_count, abs=0.02)
        assert float(bar.get("y")) + float(bar.get("height")) == pytest.approx(y_of(0), abs=0.02)
        assert float(bar.get("x")) == pytest.approx(x_of(left), abs=0.02)
        assert float(bar.get("width")) == pytest.approx(x_of(0.5) - x_of(0.0), abs=0.02)


def test_log_counts_keep_single_counts_visible_and_order_heights():
    data = np.concatenate([np.zeros(1), np.ones(10), np.full(1000, 2.0)])
    root = parse(svg_histogram({"a": data}, bins=3, log_y=True, title="t", x_label="x"))
    heights = [float(b.get("height")) for b in by_class(root, "bar")]
    assert len(heights) == 3 and 0 < heights[0] < heights[1] < heights[2]
    # equal steps in log10(count): 1 -> 10 -> 1000 is 1 then 2 decades
    assert heights[2] - heights[1] == pytest.approx(2 * (heights[1] - heights[0]), abs=0.05)
    assert texts(root, "ytick-label") == ["1", "10", "100", "1000"]
    root = parse(svg_histogram({"a": np.zeros(2_000_000)}, log_y=True, title="t", x_label="x"))
    assert texts(root, "ytick-label")[-2:] == ["1,000,000", "1e7"]


def test_threshold_line_sits_at_its_value_on_linear_and_log_axes():
    rng = np.random.default_rng(1)
    scores = rng.chisquare(8, 20_000)
    root = parse(svg_histogram({"s": scores}, vlines={"threshold": 23.2}, title="t", x_label="x"))
    (line,) = by_class(root, "vline")
    assert float(line.get("x1")) == pytest.approx(mapper(root, "x")(23.2), abs=0.02)
    assert texts(root, "vline-label") == ["threshold = 23.2"]

    root = parse(svg_histogram({"s": scores}, log_x=True, vlines={"threshold": 23.2}, title="t", x_label="x"))
    (line,) = by_class(root, "vline")
    assert float(line.get("x1")) == pytest.approx(mapper(root, "x", log=True)(23.2), abs=0.05)


def test_threshold_outside_the_data_widens_the_axis():
    root = parse(svg_histogram({"s": np.arange(10.0)}, vlines={"cut": 50.0}, title="t", x_label="x"))
    assert label_value(texts(root, "xtick-label")[-1]) >= 50


@pytest.mark.parametrize(
    "lo, hi",
    [(0.0, 1.0), (-3.7, 12.1), (23.0, 23.4), (0.001, 0.0013), (-1e9, 3e9), (1e-7, 5e-7), (5.0, 1e12), (999.0, 1001.0)],
)
def test_tick_labels_are_nice_and_cover_the_data(lo, hi):
    data = np.linspace(lo, hi, 101)
    root = parse(svg_histogram({"a": data}, bins=10, title="t", x_label="x"))
    xs = [label_value(t) for t in texts(root, "xtick-label")]
    assert 3 <= len(xs) <= 12
    step = assert_nice(xs)
    assert xs[0] <= lo + 1e-9 * abs(lo) and xs[-1] >= hi - 1e-9 * abs(hi)
    assert xs[0] > lo - step and xs[-1] < hi + step  # not wider than one step each side
    ys = [label_value(t) for t in texts(root, "ytick-label")]
    assert_nice(ys)
    assert ys[0] == 0 and ys[-1] >= 11  # the largest bin of 101 values in 10 bins


def test_log_x_ticks_are_powers_or_1_2_5_multiples_covering_the_data():
    data = np.geomspace(0.02, 3e6, 500)
    root = parse(svg_histogram({"a": data}, log_x=True, title="t", x_label="x"))
    xs = [label_value(t) for t in texts(root, "xtick-label")]
    assert xs == sorted(xs) and len(xs) >= 3
    for v in xs:
        assert math.log10(v) == pytest.approx(round(math.log10(v)))
    x_of = mapper(root, "x", log=True)
    left, right = float(by_class(root, "axis")[0].get("x1")), float(by_class(root, "axis")[0].get("x2"))
    assert left <= x_of(0.02) and x_of(3e6) <= right

    narrow = np.geomspace(15, 150, 100)
    root = parse(svg_histogram({"a": narrow}, log_x=True, title="t", x_label="x"))
    assert [label_value(t) for t in texts(root, "xtick-label")] == [20, 50, 100]


def test_legend_lists_series_in_order_only_when_several():
    names = ["honest", "compromised <x>", "observers & co"]
    svg = svg_histogram({n: np.arange(5.0) + i for i, n in enumerate(names)}, title="t", x_label="x")
    root = parse(svg)
    assert texts(root, "legend-label") == names
    assert [e.get("fill") for e in by_class(root, "legend-swatch")] == list(PALETTE[:3])
    assert "compromised &lt;x&gt;" in svg
    assert by_class(parse(svg_histogram({"only": np.arange(5.0)}, title="t", x_label="x")), "legend") == []


def test_titles_and_labels_are_escaped():
    title = '<script>alert("x")</script> & \x00 \'q\''
    svg = svg_histogram({"a<b": [1.0, 2.0], "c": [3.0]}, title=title, x_label="<x>", y_label="y&")
    assert "<script" not in svg
    root = parse(svg)
    shown = title.replace("\x00", "\ufffd")
    assert texts(root, "title") == [shown]
    assert root.find("{http://www.w3.org/2000/svg}title").text == shown
    assert texts(root, "x-label") == ["<x>"] and texts(root, "y-label") == ["y&"]


def test_nan_inf_huge_and_nonpositive_values_are_dropped_and_counted():
    a = np.array([1.0, 2.0, 3.0, np.nan, np.nan, np.inf, -np.inf, 1e305, -4.0, 0.0])
    root = parse(svg_histogram({"a": a, "b": [np.nan]}, bins=5, title="t", x_label="x"))
    note = note_text(root)
    assert "a: 4 NaN/inf dropped" in note
    assert "a: 1 beyond ±1e300 dropped" in note
    assert "b: 1 NaN/inf dropped" in note and "b: no values" in note
    counted = sum(int(re.search(r": (\d+) in", t).group(1)) for t in texts(root, "bar"))
    assert counted == 5  # 1, 2, 3, -4, 0
    assert_no_nonfinite_numbers(root)

    root = parse(svg_histogram({"a": a}, bins=5, log_x=True, title="t", x_label="x"))
    assert "a: 2 values ≤ 0 dropped (log scale)" in note_text(root)
    assert sum(int(re.search(r": (\d+) in", t).group(1)) for t in texts(root, "bar")) == 3


def test_unusable_vlines_are_noted_not_drawn():
    root = parse(svg_histogram({"a": [1.0, 2.0]}, log_x=True, vlines={"nan": np.nan, "zero": 0.0, "ok": 1.5},
                               title="t", x_label="x"))
    assert len(by_class(root, "vline")) == 1
    assert "nan: not finite" in note_text(root) and "zero: ≤ 0" in note_text(root)


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
def test_edge_cases_give_a_well_formed_plot(series, log_x, log_y):
    root = parse(svg_histogram(series, log_x=log_x, log_y=log_y, vlines={"t": 1.0}, title="t", x_label="x"))
    assert_no_nonfinite_numbers(root)
    assert len(by_class(root, "xtick-label")) >= 2
    has_data = any(np.any(np.isfinite(np.asarray(v, float)) & ((np.asarray(v, float) > 0) | (not log_x)))
                   for v in series.values())
    assert bool(by_class(root, "bar")) == has_data
    assert bool(by_class(root, "empty")) == (not has_data)


def test_all_equal_values_make_one_bar_around_the_value():
    root = parse(svg_histogram({"a": [5.0] * 10}, title="t", x_label="x"))
    (bar,) = by_class(root, "bar")
    x_of = mapper(root, "x")
    centre = float(bar.get("x")) + float(bar.get("width")) / 2
    assert centre == pytest.approx(x_of(5.0), abs=0.05)
    assert "10 in" in texts(root, "bar")[0]


def test_bins_are_validated_and_capped():
    with pytest.raises(ValueError):
        svg_histogram({"a": [1.0]}, bins=0, title="t", x_label="x")
    root = parse(svg_histogram({"a": np.arange(100_000.0)}, bins=10**6, title="t", x_label="x"))
    assert len(by_class(root, "bar")) == report_html.MAX_BINS


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(0, 40), elements=st.floats(allow_nan=True, allow_infinity=True)),
    st.booleans(),
    st.booleans(),
)
def test_any_float_data_gives_well_formed_finite_svg(values, log_x, log_y):
    root = parse(svg_histogram({"a": values, "b": values[::2]}, log_x=log_x, log_y=log_y, bins=7,
                               vlines={"v": float(values[0]) if values.size else 1.0}, title="t", x_label="x"))
    assert_no_nonfinite_numbers(root)
    xs = [label_value(t) for t in texts(root, "xtick-label")]
    assert len(xs) >= 1 and all(math.isfinite(v) for v in xs)


def test_histogram_output_is_deterministic():
    def make():
        rng = np.random.default_rng(5)
        return svg_histogram({"h": rng.normal(size=1000), "c": rng.normal(3, 1, 50)}, log_y=True,
                             vlines={"t": 2.5}, title="t", x_label="x")

    assert make() == make()


def test_million_value_histogram_stays_small():
    rng = np.random.default_rng(2)
    svg = svg_histogram({"honest": rng.chisquare(8, 1_000_000), "compromised": rng.normal(60, 10, 10_000)},
                        bins=200, log_y=True, vlines={"threshold": 23.2}, title="t", x_label="x")
    assert len(svg.encode()) < 150_000


# --------------------------------------------------------------------------- lines


def path_runs(root: ET.Element) -> list[list[tuple[float, float]]]:
    """The subpaths of each series path, as (x, y) pixel pairs."""
    out = []
    for path in by_class(root, "series"):
        runs = []
        for sub in path.get("d").split("M")[1:]:
            nums = [float(v) for v in sub.split()]
            runs.append(list(zip(nums[::2], nums[1::2], strict=True)))
        out.append(runs)
    return out


def test_nan_breaks_a_line_and_lone_points_become_dots():
    x = np.arange(7.0)
    y = np.array([0.0, 1.0, np.nan, 3.0, 4.0, np.nan, 6.0])
    root = parse(svg_lines(x, {"a": y}, title="t", x_label="round", y_label="v"))
    (runs,) = path_runs(root)
    assert [len(r) for r in runs] == [2, 2]
    (dot,) = by_class(root, "point")
    x_of, y_of = mapper(root, "x"), mapper(root, "y")
    assert float(dot.get("cx")) == pytest.approx(x_of(6.0), abs=0.02)
    assert float(dot.get("cy")) == pytest.approx(y_of(6.0), abs=0.02)
    assert runs[1][0] == pytest.approx((x_of(3.0), y_of(3.0)), abs=0.02)
    assert "a: 2 NaN/inf not drawn" in note_text(root)


def test_lines_are_drawn_in_x_order_and_bad_x_dropped():
    root = parse(svg_lines(np.array([2.0, np.nan, 0.0, 1.0]), {"a": np.array([20.0, 99.0, 0.0, 10.0])},
                           title="t", x_label="x", y_label="y"))
    ((run,),) = path_runs(root)
    assert [p[0] for p in run] == sorted(p[0] for p in run)
    y_of = mapper(root, "y")
    assert [p[1] for p in run] == pytest.approx([y_of(0.0), y_of(10.0), y_of(20.0)], abs=0.02)
    assert "1 points with NaN/inf x dropped" in note_text(root)


def test_y_range_fixes_the_axis_and_counts_clipped_points():
    x = np.arange(4.0)
    root = parse(svg_lines(x, {"p": np.array([0.2, 1.5, -0.1, 0.5]), "q": np.full(4, 0.5)},
                           y_range=(0.0, 1.0), title="t", x_label="x", y_label="p"))
    assert [label_value(t) for t in texts(root, "ytick-label")] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert "p: 2 points outside the y range (clipped)" in note_text(root)
    assert "q:" not in note_text(root)
    assert len(root.findall(".//{http://www.w3.org/2000/svg}clipPath")) == 1
    assert texts(root, "legend-label") == ["p", "q"]
    strokes = [e.get("stroke") for e in by_class(root, "series")]
    assert strokes == list(PALETTE[:2])


@pytest.mark.parametrize("x_lo, x_hi, y_lo, y_hi", [(0, 99, 0.1, 0.93), (1, 7, -250.0, 1e4), (1e5, 1.5e5, 1e-6, 3e-6)])
def test_line_ticks_are_nice_and_cover_the_data(x_lo, x_hi, y_lo, y_hi):
    x = np.linspace(x_lo, x_hi, 50)
    root = parse(svg_lines(x, {"a": np.linspace(y_lo, y_hi, 50)}, title="t", x_label="x", y_label="y"))
    for axis, lo, hi in (("xtick-label", x_lo, x_hi), ("ytick-label", y_lo, y_hi)):
        values = [label_value(t) for t in texts(root, axis)]
        step = assert_nice(values)
        assert values[0] <= lo and values[-1] >= hi * (1 - 1e-12)
        assert values[0] > lo - step and values[-1] < hi + step


def test_shade_covers_its_interval():
    x = np.arange(101.0)
    root = parse(svg_lines(x, {"c": np.sin(x)}, shade=(40, 70), title="t", x_label="round", y_label="c"))
    (shade,) = by_class(root, "shade")
    x_of = mapper(root, "x")
    assert float(shade.get("x")) == pytest.approx(x_of(40), abs=0.02)
    assert float(shade.get("width")) == pytest.approx(x_of(70) - x_of(40), abs=0.03)


def test_long_lines_are_downsampled_keeping_spikes_and_gaps():
    n = 1_000_000
    x = np.arange(float(n))
    y = np.zeros(n)
    y[123_457] = 5.0
    y[600_000:650_000] = np.nan
    svg = svg_lines(x, {"a": y}, title="t", x_label="x", y_label="y")
    root = parse(svg)
    (runs,) = path_runs(root)
    assert sum(len(r) for r in runs) <= MAX_LINE_POINTS
    assert len(runs) == 2  # the gap survives
    y_of = mapper(root, "y")
    assert min(p[1] for r in runs for p in r) == pytest.approx(y_of(5.0), abs=0.02)  # the spike survives
    assert "a: 50,000 NaN/inf not drawn" in note_text(root)
    assert svg == svg_lines(x, {"a": y.copy()}, title="t", x_label="x", y_label="y")


def test_line_edge_cases_never_raise():
    for x, ys in [
        (np.array([]), {"a": np.array([])}),
        (np.array([1.0]), {"a": np.array([1.0])}),
        (np.arange(3.0), {"a": np.full(3, np.nan)}),
        (np.full(3, 2.0), {"a": np.full(3, 4.0)}),
        (np.arange(3.0), {}),
        (np.array([-1e300, 0, 1e300]), {"a": np.array([1e300, -1e300, 0.0])}),
    ]:
        root = parse(svg_lines(x, ys, title="t", x_label="x", y_label="y", y_range=(1, 1), shade=(np.nan, 1)))
        assert_no_nonfinite_numbers(root)
        assert len(by_class(root, "xtick-label")) >= 2


def test_series_length_must_match_x():
    with pytest.raises(ValueError, match="has 2 values but x has 3"):
        svg_lines(np.arange(3.0), {"a": np.arange(2.0)}, title="t", x_label="x", y_label="y")


# --------------------------------------------------------------------------- bars


def test_bars_measure_values_and_highlight_flags():
    values = np.array([0.9, 0.25, -0.5, np.nan, 0.75])
    flags = [False, True, False, True, False]
    root = parse(svg_bars(["s1", "s2", "s3", "s4", "s5"], values, title="t", y_label="rep", highlight=flags))
    bars = by_class(root, "bar")
    assert len(bars) == 4
    assert len(by_class(root, "highlight")) == 1 and by_class(root, "highlight")[0].get("fill") == PALETTE[1]
    y_of = mapper(root, "y")
    for bar, v in zip(bars, [0.9, 0.25, -0.5, 0.75], strict=True):
        assert float(bar.get("height")) == pytest.approx(abs(y_of(v) - y_of(0)), abs=0.02)
        assert float(bar.get("y")) == pytest.approx(min(y_of(v), y_of(0)), abs=0.02)
    assert texts(root, "bar-label") == ["s1", "s2", "s3", "s4", "s5"]
    assert texts(root, "legend-label") == ["highlighted", "other"]
    assert "values: 1 NaN/inf not drawn" in note_text(root)


@pytest.mark.parametrize("n", [1, 2, 37, 200])
def test_one_to_two_hundred_bars_with_thinned_labels(n):
    labels = [f"observer-{i:04d}" for i in range(n)]
    root = parse(svg_bars(labels, np.linspace(0, 1, n), title="t", y_label="y"))
    assert len(by_class(root, "bar")) == n
    shown = texts(root, "bar-label")
    assert shown[0] == "observer-0000" and 1 <= len(shown) <= n
    if n == 200:
        assert len(shown) <= 40
    xs = [float(b.get("x")) for b in by_class(root, "bar")]
    assert xs == sorted(xs)
    assert all(float(b.get("width")) > 0 for b in by_class(root, "bar"))
    assert by_class(root, "legend") == []


def test_bar_edge_cases():
    assert by_class(parse(svg_bars([], np.array([]), title="t", y_label="y")), "empty")
    root = parse(svg_bars(["a"], np.array([np.inf]), title="t", y_label="y"))
    assert by_class(root, "empty") and "values: 1 NaN/inf not drawn" in note_text(root)
    assert_no_nonfinite_numbers(parse(svg_bars(["a", "b"], np.array([1e300, -1e300]), title="t", y_label="y")))
    with pytest.raises(ValueError):
        svg_bars(["a"], np.array([1.0, 2.0]), title="t", y_label="y")
    with pytest.raises(ValueError):
        svg_bars(["a"], np.array([1.0]), title="t", y_label="y", highlight=[True, False])


# --------------------------------------------------------------------------- document


def sample_report(n: int = 1_000_000) -> str:
    rng = np.random.default_rng(3)
    honest, compromised = rng.chisquare(8, n), rng.normal(60, 10, n // 100)
    rounds = np.arange(n, dtype=float)
    plots = [
        svg_histogram({"honest": honest, "compromised": compromised}, log_y=True, vlines={"threshold": 23.2},
                      title="Anomaly score", x_label="score"),
        svg_histogram({"honest": honest, "compromised": compromised}, log_x=True, title="Log score", x_label="s"),
        svg_lines(rounds, {"recall": rng.random(n), "precision": rng.random(n)}, y_range=(0, 1),
                  title="Detection", x_label="round", y_label="fraction"),
        svg_lines(rounds, {"honest": rng.random(n), "compromised": rng.random(n), "all": rng.random(n)},
                  title="Consensus", x_label="round", y_label="p", shade=(n / 3, n / 2)),
        svg_lines(rounds, {"confidence": rng.random(n)}, title="Confidence", x_label="round", y_label="c"),
        svg_bars([f"obs-{i}" for i in range(200)], rng.random(200), highlight=[i % 9 == 0 for i in range(200)],
                 title="Reputation", y_label="weight"),
    ]
    return render_report(
        "swarmguard simulate <seed 7>",
        {"agents": 1_000_000, "seed": 7, "detection": {"precision": 0.98765, "recall": 1.0, "f1": 0.9938},
         "performance": {"throughput": 1234567.8, "latency_p99_s": 0.000123, "ok": True}},
        [(f"Plot {i} & more", p) for i, p in enumerate(plots)],
        [("False alarms <per round>", ["round", "alarms", "note"], [[1, 3, "<high>"], [2, 0.5, None]])],
    )


def test_report_is_well_formed_small_and_self_contained():
    doc = sample_report()
    assert len(doc.encode()) < 2_000_000
    parser = check_document(doc)
    assert parser.title == "swarmguard simulate <seed 7>"
    assert "<title>swarmguard simulate &lt;seed 7&gt;</title>" in doc
    assert "<script" not in doc.lower()
    assert not [v for k, v in parser.attrs if k in ("src", "href")]
    assert doc.count("<svg") == 6
    for svg in re.findall(r"<svg.*?</svg>", doc, flags=re.S):
        assert_no_nonfinite_numbers(parse(svg))


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
