"""Self-contained HTML reports with inline SVG plots (standard library and NumPy only).

The plots are built as SVG text: overlaid histograms (:func:`svg_histogram`),
lines over a shared x (:func:`svg_lines`) and bar charts (:func:`svg_bars`).
:func:`render_report` puts them, a summary and tables into one HTML document
with inline CSS and no scripts or external resources; :func:`write_report`
writes it atomically.

Rules every plot follows:

* Data are reduced before they are drawn: histograms are binned, lines longer
  than :data:`MAX_LINE_POINTS` are downsampled (min/max per bucket, so spikes
  stay visible), so a report over 10**6-value series stays small.
* NaN, ±inf and values beyond ±MAX_ABS (1e300) are never drawn; they are
  counted in a small note under the plot. NaN/inf is never written into the SVG.
* Empty series, a single value and all-equal values give a readable plot
  (or a "no data" plot), never an exception.
* Colours come from the Okabe–Ito palette (:data:`PALETTE`), which stays
  distinguishable with the common colour-vision deficiencies.
* All text is HTML/XML-escaped; characters XML forbids become U+FFFD.
* The output is deterministic: the same input gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape as _html_escape
from typing import Any

import numpy as np

__all__ = [
    "MAX_ABS",
    "MAX_BINS",
    "MAX_LINE_POINTS",
    "PALETTE",
    "format_value",
    "render_report",
    "svg_bars",
    "svg_histogram",
    "svg_lines",
    "write_report",
]

#: Okabe–Ito colour-blind-safe palette, in the order series are coloured.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
#: Dash patterns used for lines once the palette has been used up.
_DASHES = ("", "6 3", "2 2", "8 3 2 3")
#: Values with a larger magnitude are treated like inf: dropped and counted.
MAX_ABS = 1e300
#: ``bins`` above this are reduced to it.
MAX_BINS = 1000
#: Lines with more points are downsampled to at most about this many.
MAX_LINE_POINTS = 2000
#: Spans below this are treated as empty (keeps tick steps far from subnormals).
_TINY = 1e-290

_WIDTH = 720
_LEFT = 78
_RIGHT = 24
_PLOT_WIDTH = _WIDTH - _LEFT - _RIGHT
_PLOT_HEIGHT = 260
_TITLE_BAND = 34
_LEGEND_ROW = 18
_NOTE_ROW = 14
_MAX_NOTES = 6
_CHAR_WIDTH = 6.6  # rough width of one 12px sans-serif character
_GRID = "#e3e3e3"
_INK = "#333333"
_MARK = "#000000"

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# --------------------------------------------------------------------------- text


def _escape(text: object) -> str:
    """Escape text for HTML and XML, replacing characters XML 1.0 forbids."""
    return _html_escape(_XML_INVALID.sub("\ufffd", str(text)), quote=True)


def _n(value: float) -> str:
    """A pixel coordinate as short, finite text (2 decimals, trailing zeros cut)."""
    v = float(value)
    if not math.isfinite(v):  # unreachable by construction; never write NaN/inf
        v = 0.0
    v = min(max(v, -1e5), 1e5)
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _attrs(attrs: Mapping[str, object]) -> str:
    parts = []
    for key, value in attrs.items():
        if value is None:
            continue
        text = _n(value) if isinstance(value, float) else _escape(value)
        parts.append(f' {key}="{text}"')
    return "".join(parts)


def _el(tag: str, attrs: Mapping[str, object], text: str | None = None, children: str = "") -> str:
    """One SVG element; ``text`` is escaped, ``children`` is inserted as markup."""
    inner = (_escape(text) if text is not None else "") + children
    if not inner:
        return f"<{tag}{_attrs(attrs)}/>"
    return f"<{tag}{_attrs(attrs)}>{inner}</{tag}>"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "\u2026"


def _strip_zeros(s: str) -> str:
    if "." not in s:
        return s
    mantissa, _, exp = s.partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return mantissa + ("e" + exp if exp else "")


def _format_float(v: float) -> str:
    """About four significant digits, thousands separators, never losing integer digits."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e15:
        decimals = max(0, 3 - math.floor(math.log10(a)))
        return _strip_zeros(f"{v:,.{decimals}f}")
    mantissa, _, exp = f"{v:.3e}".partition("e")
    return f"{_strip_zeros(mantissa)}e{int(exp)}"


def format_value(value: Any) -> str:
    """Format a summary or table value for reading (not yet escaped).

    Integers get thousands separators, floats about four significant digits
    (never rounding away integer digits), booleans ``yes``/``no``, ``None`` a
    dash, sequences and mappings their formatted items.

    Examples
    --------
    >>> format_value(1000000), format_value(0.95), format_value(23.2004), format_value(123456.7)
    ('1,000,000', '0.95', '23.2', '123,457')
    >>> format_value(1.5e-05), format_value(float("nan")), format_value(True), format_value(None)
    ('1.5e-5', 'NaN', 'yes', '—')
    >>> format_value([1, 0.5]), format_value({"p50": 0.25})
    ('1, 0.5', 'p50: 0.25')
    """
    if value is None:
        return "\u2014"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return _format_float(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    if isinstance(value, np.ndarray):
        value = value.ravel().tolist()
    if isinstance(value, (list, tuple)):
        shown = [format_value(v) for v in value[:20]]
        return ", ".join(shown) + (", \u2026" if len(value) > 20 else "")
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


# --------------------------------------------------------------------------- data


def _as_float_1d(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def _plottable(a: np.ndarray) -> np.ndarray:
    """True where a value can be drawn: finite and within ±MAX_ABS."""
    return np.isfinite(a) & (np.abs(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)) <= MAX_ABS)


def _dropped_note(name: str, values: np.ndarray, what: str = "dropped") -> list[str]:
    """Notes counting NaN/inf and out-of-range values of one series."""
    notes = []
    nonfinite = int(np.count_nonzero(~np.isfinite(values)))
    if nonfinite:
        notes.append(f"{name}: {nonfinite:,} NaN/inf {what}")
    huge = int(values.size - nonfinite - np.count_nonzero(_plottable(values)))
    if huge:
        notes.append(f"{name}: {huge:,} beyond \u00b11e300 {what}")
    return notes


def _expand_degenerate(lo: float, hi: float, *, log: bool = False) -> tuple[float, float]:
    """Widen an empty or numerically tiny interval around its value."""
    span = hi - lo
    scale = max(abs(lo), abs(hi))
    if span > scale * 1e-9 and span > _TINY:
        return lo, hi
    if log:
        pad = 0.05
    else:
        pad = abs(lo) * 0.1 if abs(lo) > _TINY * 1e3 else 1.0
    return lo - pad, hi + pad


# --------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class _Axis:
    """A linear axis over plotted units (log10 of the data on log axes)."""

    lo: float
    hi: float
    ticks: tuple[tuple[float, str], ...]

    def fraction(self, v: Any) -> Any:
        """Position of ``v`` along the axis (0 at lo, 1 at hi), clipped to [-50, 50]."""
        with np.errstate(over="ignore", invalid="ignore"):
            f = np.divide(np.subtract(v, self.lo), self.hi - self.lo)
        return np.clip(np.nan_to_num(f, nan=0.0), -50.0, 50.0)


def _nice_step(span: float, target: int) -> float:
    """The 1, 2, 2.5 or 5 times a power of ten closest above span / (target - 1)."""
    raw = span / max(target - 1, 1)
    base = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0):
        if raw <= m * base * (1 + 1e-9):
            return m * base
    return 10.0 * base


def _fixed_label(v: float, decimals: int) -> str:
    s = f"{v:,.{decimals}f}" if abs(v) >= 1e4 else f"{v:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s.replace(",", "")) == 0 else s


def _sci_label(v: float, digits: int) -> str:
    if v == 0:
        return "0"
    mantissa, _, exp = f"{v:.{digits}e}".partition("e")
    return f"{_strip_zeros(mantissa)}e{int(exp)}"


def _tick_labels(values: Sequence[float], step: float) -> list[str]:
    """Labels with just enough digits to tell ticks ``step`` apart."""
    step_exp = math.floor(math.log10(step) + 1e-9)
    extra = 1 if abs(step / 10.0**step_exp - 2.5) < 1e-6 else 0
    biggest = max(abs(v) for v in values)
    if biggest >= 1e6 or 0 < biggest < 1e-3:
        digits = max(0, math.floor(math.log10(biggest) + 1e-9) - step_exp + extra)
        return [_sci_label(v, digits) for v in values]
    decimals = max(0, -step_exp + extra)
    return [_fixed_label(v, decimals) for v in values]


def _linear_axis(lo: float, hi: float, *, fixed: bool = False, target: int = 6) -> _Axis:
    """Nice ticks; the domain is widened to whole steps unless ``fixed``."""
    lo, hi = _expand_degenerate(lo, hi)
    step = _nice_step(hi - lo, target)
    if not fixed:
        lo = math.floor(lo / step + 1e-9) * step
        hi = math.ceil(hi / step - 1e-9) * step
    k0 = math.ceil(lo / step - 1e-9)
    k1 = math.floor(hi / step + 1e-9)
    values = [k * step for k in range(k0, k1 + 1)] or [lo]
    return _Axis(lo, hi, tuple(zip(values, _tick_labels(values, step), strict=True)))


def _power_label(k: int) -> str:
    if -3 <= k <= 6:
        return _fixed_label(10.0**k, max(0, -k))
    return f"1e{k}"


def _decade_ticks(e0: int, e1: int) -> tuple[tuple[float, str], ...]:
    step = 1
    for candidate in (1, 2, 5, 10, 20, 50, 100):
        step = candidate
        if (e1 - e0) / step <= 8:
            break
    first = math.ceil(e0 / step) * step
    return tuple((float(k), _power_label(k)) for k in range(first, e1 + 1, step))


def _log_ticks(lo_e: float, hi_e: float) -> tuple[tuple[float, str], ...]:
    """Ticks inside [lo_e, hi_e] (log10 units): 1-2-5 per decade over few decades, else decades."""
    e0, e1 = math.floor(lo_e + 1e-9), math.ceil(hi_e - 1e-9)
    if e1 - e0 > 4:
        return tuple(t for t in _decade_ticks(e0, e1) if lo_e - 1e-9 <= t[0] <= hi_e + 1e-9)
    ticks = []
    for k in range(e0, e1 + 1):
        for m in (1, 2, 5):
            pos = k + math.log10(m)
            if lo_e - 1e-9 <= pos <= hi_e + 1e-9:
                ticks.append((pos, _fixed_label(m * 10.0**k, max(0, -k)) if -3 <= k <= 6 else f"{m}e{k}"))
    return tuple(ticks)


def _log_axis(lo_e: float, hi_e: float) -> _Axis:
    """An axis over log10 units: the data span padded by 2 %, with 1-2-5 or decade ticks.

    Under one decade the ticks are nice linear values instead.
    """
    lo_e, hi_e = _expand_degenerate(lo_e, hi_e, log=True)
    if hi_e - lo_e >= 1 - 1e-9:
        pad = 0.02 * (hi_e - lo_e)
        return _Axis(lo_e - pad, hi_e + pad, _log_ticks(lo_e - pad, hi_e + pad))
    linear = _linear_axis(10.0**lo_e, 10.0**hi_e)
    if linear.lo > 0:
        lo_e, hi_e = math.log10(linear.lo), math.log10(linear.hi)
    ticks = tuple(
        (math.log10(v), label)
        for v, label in linear.ticks
        if v > 0 and lo_e - 1e-9 <= math.log10(v) <= hi_e + 1e-9
    )
    if len(ticks) < 2:  # no nice values inside: label the ends
        ticks = ((lo_e, _format_float(10.0**lo_e)), (hi_e, _format_float(10.0**hi_e)))
    return _Axis(lo_e, hi_e, ticks)


def _count_log_axis(max_count: int) -> _Axis:
    """Log axis for counts: from 10**-0.5 (so a count of 1 shows) to a whole decade."""
    top = max(1, math.ceil(math.log10(max(max_count, 1)) - 1e-9))
    return _Axis(-0.5, float(top), _decade_ticks(0, top))


# --------------------------------------------------------------------------- frame


@dataclass(frozen=True)
class _Frame:
    """Plot-area geometry and the two axes that map data to pixels."""

    top: float
    height: float
    x: _Axis
    y: _Axis
    left: float = _LEFT
    width: float = _PLOT_WIDTH

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def px(self, v: Any) -> Any:
        return self.left + self.x.fraction(v) * self.width

    def py(self, v: Any) -> Any:
        return self.bottom - self.y.fraction(v) * self.height


def _legend_rows(names: Sequence[str]) -> list[list[int]]:
    """Indices of legend entries per row, wrapped to the plot width."""
    rows: list[list[int]] = [[]]
    used = 0.0
    for i, name in enumerate(names):
        w = 28 + _CHAR_WIDTH * len(_shorten(name, 40))
        if rows[-1] and used + w > _PLOT_WIDTH:
            rows.append([])
            used = 0.0
        rows[-1].append(i)
        used += w
    return rows if rows[0] else []


def _legend(names: Sequence[str], styles: Sequence[dict[str, object]], top: float, *, line: bool) -> str:
    """Legend entries (swatch or line sample, then the name) in wrapped rows."""
    out = []
    for r, row in enumerate(_legend_rows(names)):
        x = float(_LEFT)
        y = top + r * _LEGEND_ROW
        for i in row:
            label = _shorten(names[i], 40)
            if line:
                sample = {"x1": x, "x2": x + 18, "y1": y + 6.0, "y2": y + 6.0, "stroke-width": 2.5}
                out.append(_el("line", {"class": "legend-swatch", **sample, **styles[i]}))
            else:
                sample = {"x": x, "y": y + 1.0, "width": 14.0, "height": 10.0}
                out.append(_el("rect", {"class": "legend-swatch", **sample, **styles[i]}))
            out.append(_el("text", {"class": "legend-label", "x": x + 22, "y": y + 10.0}, label))
            x += 28 + _CHAR_WIDTH * len(label)
    return _el("g", {"class": "legend"}, children="".join(out)) if out else ""


def _grid(frame: _Frame) -> str:
    """Light horizontal lines at the y ticks, drawn beneath the data."""
    return "".join(
        _el("line", {"class": "grid", "x1": frame.left, "x2": frame.left + frame.width,
                     "y1": float(frame.py(v)), "y2": float(frame.py(v)), "stroke": _GRID})
        for v, _ in frame.y.ticks
    )


def _axes(frame: _Frame, x_label: str, y_label: str, *, x_ticks: bool = True) -> str:
    """Axis lines, ticks, tick labels and axis titles."""
    out = []
    for v, label in frame.y.ticks:
        y = float(frame.py(v))
        out.append(_el("line", {"class": "ytick", "x1": frame.left - 5, "x2": frame.left,
                                "y1": y, "y2": y, "stroke": _INK}))
        out.append(_el("text", {"class": "ytick-label", "x": frame.left - 8, "y": y + 4,
                                "text-anchor": "end"}, label))
    if x_ticks:
        for v, label in frame.x.ticks:
            x = float(frame.px(v))
            out.append(_el("line", {"class": "xtick", "x1": x, "x2": x, "y1": frame.bottom,
                                    "y2": frame.bottom + 5, "stroke": _INK}))
            out.append(_el("text", {"class": "xtick-label", "x": x, "y": frame.bottom + 18,
                                    "text-anchor": "middle"}, label))
    out.append(_el("line", {"class": "axis", "x1": frame.left, "x2": frame.left + frame.width,
                            "y1": frame.bottom, "y2": frame.bottom, "stroke": _INK}))
    out.append(_el("line", {"class": "axis", "x1": frame.left, "x2": frame.left,
                            "y1": frame.top, "y2": frame.bottom, "stroke": _INK}))
    if x_label:
        out.append(_el("text", {"class": "x-label", "x": frame.left + frame.width / 2,
                                "y": frame.bottom + 38, "text-anchor": "middle"}, x_label))
    mid = frame.top + frame.height / 2
    out.append(_el("text", {"class": "y-label", "x": 16.0, "y": mid, "text-anchor": "middle",
                            "transform": f"rotate(-90 16 {_n(mid)})"}, y_label))
    return "".join(out)


def _notes(notes: Sequence[str], top: float) -> tuple[str, float]:
    """Small grey note lines (at most a few); returns the markup and its height."""
    shown = list(notes[:_MAX_NOTES])
    if len(notes) > _MAX_NOTES:
        shown.append(f"\u2026 and {len(notes) - _MAX_NOTES} more")
    out = [
        _el("text", {"class": "note", "x": float(_LEFT), "y": top + (i + 1) * _NOTE_ROW - 3,
                     "font-size": 11, "fill": "#555555"}, _shorten(line, 110))
        for i, line in enumerate(shown)
    ]
    return "".join(out), len(shown) * _NOTE_ROW


def _svg(title: str, height: float, body: str) -> str:
    """The outer <svg> element with a visible title and an accessible <title>."""
    head = _el("title", {}, title) + _el(
        "text", {"class": "title", "x": _WIDTH / 2, "y": 22.0, "text-anchor": "middle",
                 "font-size": 15, "font-weight": "bold"}, _shorten(title, 90))
    attrs = {"xmlns": "http://www.w3.org/2000/svg", "width": _WIDTH, "height": math.ceil(height),
             "viewBox": f"0 0 {_WIDTH} {math.ceil(height)}", "role": "img",
             "font-family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
             "font-size": 12, "fill": "#222222", "class": "sg-plot"}
    return f"<svg{_attrs(attrs)}>{head}{body}</svg>"


def _empty_message(frame: _Frame) -> str:
    return _el("text", {"class": "empty", "x": frame.left + frame.width / 2,
                        "y": frame.top + frame.height / 2, "text-anchor": "middle",
                        "font-size": 14, "fill": "#777777"}, "no data")


def _style(i: int, *, line: bool) -> dict[str, object]:
    colour = PALETTE[i % len(PALETTE)]
    if not line:
        return {"fill": colour}
    dash = _DASHES[(i // len(PALETTE)) % len(_DASHES)]
    return {"stroke": colour, "stroke-dasharray": dash or None}


def _assemble(title: str, names: Sequence[str], styles: Sequence[dict[str, object]], *, line: bool,
              x_axis: _Axis, y_axis: _Axis, bottom_band: float,
              draw: Any, notes: Sequence[str]) -> str:
    """Lay out title, legend, plot area, axes and notes; ``draw(frame)`` gives the data marks."""
    legend_top = float(_TITLE_BAND)
    legend = _legend(names, styles, legend_top, line=line) if len(names) > 1 else ""
    rows = len(_legend_rows(names)) if legend else 0
    frame = _Frame(top=legend_top + rows * _LEGEND_ROW + 8, height=_PLOT_HEIGHT, x=x_axis, y=y_axis)
    marks, axes = draw(frame)
    note_svg, note_height = _notes(notes, frame.bottom + bottom_band)
    height = frame.bottom + bottom_band + note_height + 6
    return _svg(title, height, legend + _grid(frame) + marks + axes + note_svg)


# --------------------------------------------------------------------------- histogram


def _histogram_values(name: str, values: Any, log_x: bool, notes: list[str]) -> np.ndarray:
    """Drawable values of one series, in plotted units (log10 when ``log_x``)."""
    v = _as_float_1d(values)
    notes.extend(_dropped_note(name, v))
    v = v[_plottable(v)]
    if log_x:
        nonpositive = int(np.count_nonzero(v <= 0))
        if nonpositive:
            notes.append(f"{name}: {nonpositive:,} values \u2264 0 dropped (log scale)")
        v = np.log10(v[v > 0])
    return v


def _vline_positions(vlines: Mapping[str, float], log_x: bool, notes: list[str]) -> list[tuple[str, float, float]]:
    """(name, value, position in plotted units) of each drawable vertical line."""
    marks = []
    for name, value in vlines.items():
        v = float(value)
        if not (math.isfinite(v) and abs(v) <= MAX_ABS):
            notes.append(f"{name}: not finite, line not drawn")
        elif log_x and v <= 0:
            notes.append(f"{name}: \u2264 0, line not drawn (log scale)")
        else:
            marks.append((str(name), v, math.log10(v) if log_x else v))
    return marks


def _vline_marks(frame: _Frame, marks: Sequence[tuple[str, float, float]]) -> str:
    out = []
    for i, (name, value, pos) in enumerate(marks):
        x = float(frame.px(pos))
        out.append(_el("line", {"class": "vline", "x1": x, "x2": x, "y1": frame.top, "y2": frame.bottom,
                                "stroke": _MARK, "stroke-width": 1.5, "stroke-dasharray": "5 3"}))
        right = x > frame.left + 0.7 * frame.width
        out.append(_el("text", {"class": "vline-label", "x": x - 4 if right else x + 4,
                                "y": frame.top + 12 + 14 * i, "text-anchor": "end" if right else "start"},
                       f"{name} = {format_value(value)}"))
    return "".join(out)


def _histogram_bars(frame: _Frame, counts: Mapping[str, np.ndarray], edges: np.ndarray,
                    log_x: bool, log_y: bool) -> str:
    out = []
    opacity = 0.85 if len(counts) == 1 else 0.5
    left = frame.px(edges[:-1])
    right = frame.px(edges[1:])
    real_edges = 10.0**edges if log_x else edges
    for i, (name, c) in enumerate(counts.items()):
        colour = PALETTE[i % len(PALETTE)]
        for j in np.flatnonzero(c):
            top = float(frame.py(math.log10(c[j]) if log_y else float(c[j])))
            tip = (f"{name}: {int(c[j]):,} in [{format_value(float(real_edges[j]))}, "
                   f"{format_value(float(real_edges[j + 1]))}]")
            out.append(_el("rect", {"class": "bar", "x": float(left[j]), "y": top,
                                    "width": max(float(right[j] - left[j]), 0.5),
                                    "height": frame.bottom - top, "fill": colour,
                                    "fill-opacity": opacity, "stroke": colour, "stroke-width": 0.5},
                           children=_el("title", {}, tip)))
    return "".join(out)


def svg_histogram(series: dict[str, np.ndarray], *, bins: int = 50, log_x: bool = False,
                  log_y: bool = False, vlines: dict[str, float] | None = None, title: str,
                  x_label: str, y_label: str = "agents") -> str:
    """Overlaid histograms of named series over shared bins, as an SVG fragment.

    Parameters
    ----------
    series : dict of str to array_like
        Named samples, e.g. ``{"honest": ..., "compromised": ...}``. NaN, ±inf
        and values beyond ±MAX_ABS are dropped and counted in a note.
    bins : int
        Number of equal-width bins (in log space when ``log_x``), shared by all
        series; at most MAX_BINS.
    log_x : bool
        Bin and draw x in log10; values <= 0 are dropped and counted in a note.
    log_y : bool
        Logarithmic count axis (a count of 1 still shows).
    vlines : dict of str to float, optional
        Named vertical lines, e.g. ``{"threshold": 23.2}``; the x axis is widened
        to include them.
    title, x_label, y_label : str
        Plot title and axis labels (escaped).

    Returns
    -------
    str
        An ``<svg>`` element: one ``rect.bar`` per non-empty bin and series,
        a legend when there is more than one series.

    Examples
    --------
    >>> import numpy as np
    >>> svg = svg_histogram({"a": np.arange(10.0)}, title="t", x_label="x")
    >>> svg.startswith("<svg") and svg.endswith("</svg>")
    True
    >>> svg_histogram({"a": [1.0, np.nan]}, bins=5, title="t", x_label="x").count('class="bar"')
    1
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    bins = min(int(bins), MAX_BINS)
    notes: list[str] = []
    names = [str(k) for k in series]
    data = {str(k): _histogram_values(str(k), v, log_x, notes) for k, v in series.items()}
    for name, v in data.items():
        if v.size == 0:
            notes.append(f"{name}: no values")
    marks = _vline_positions(vlines or {}, log_x, notes)
    present = [v for v in data.values() if v.size]
    positions = [m[2] for m in marks]
    if present:
        lo = min(float(v.min()) for v in present)
        hi = max(float(v.max()) for v in present)
        wide_lo, wide_hi = _expand_degenerate(lo, hi, log=log_x)
        if (wide_lo, wide_hi) != (lo, hi):
            bins = 1  # all values (nearly) equal: one bar around them
        lo, hi = wide_lo, wide_hi
        edges = np.linspace(lo, hi, bins + 1)
        counts = {name: np.histogram(v, bins=edges)[0] for name, v in data.items()}
        max_count = max(int(c.max()) for c in counts.values())
        span = [lo, hi, *positions]
    else:
        edges, counts, max_count = np.zeros(0), {}, 0
        span = positions or [0.0, 1.0]
    x_axis = _log_axis(min(span), max(span)) if log_x else _linear_axis(min(span), max(span))
    if log_y:
        y_axis = _count_log_axis(max_count)
    else:
        y_axis = _linear_axis(0.0, float(max(max_count, 1)))

    def draw(frame: _Frame) -> tuple[str, str]:
        body = _histogram_bars(frame, counts, edges, log_x, log_y) if present else _empty_message(frame)
        return body + _vline_marks(frame, marks), _axes(frame, x_label, y_label)

    styles = [_style(i, line=False) for i in range(len(names))]
    return _assemble(title, names, styles, line=False, x_axis=x_axis, y_axis=y_axis,
                     bottom_band=48, draw=draw, notes=notes)


# --------------------------------------------------------------------------- lines


def _downsample_minmax(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each bucket's minimum and maximum (in order) and a NaN where it had gaps.

    ``y`` holds NaN where nothing is drawn. Buckets are fixed index ranges, so
    the result depends on the data only.
    """
    if x.size <= max_points:
        return x, y
    bounds = np.linspace(0, x.size, max_points // 2 + 1).astype(np.int64)
    out_x: list[float] = []
    out_y: list[float] = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        segment = y[a:b]
        ok = np.flatnonzero(~np.isnan(segment))
        if ok.size:
            i_min = int(ok[np.argmin(segment[ok])])
            i_max = int(ok[np.argmax(segment[ok])])
            for i in sorted({i_min, i_max}):
                out_x.append(float(x[a + i]))
                out_y.append(float(segment[i]))
        if ok.size < segment.size:
            out_x.append(float(x[a]))
            out_y.append(math.nan)
    return np.asarray(out_x), np.asarray(out_y)


def _runs(ok: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive True values."""
    padded = np.concatenate(([False], ok, [False])).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(change[::2], change[1::2], strict=True)]


def _line_marks(frame: _Frame, x: np.ndarray, y: np.ndarray, style: dict[str, object]) -> str:
    """One path per series (one subpath per run of drawable points), dots for lone points."""
    px = frame.px(x)
    py = np.clip(frame.py(np.nan_to_num(y, nan=0.0)), -1e4, 1e4)
    parts, dots = [], []
    for a, b in _runs(~np.isnan(y)):
        if b - a == 1:
            dots.append(_el("circle", {"class": "point", "cx": float(px[a]), "cy": float(py[a]),
                                       "r": 2.5, "fill": style["stroke"]}))
            continue
        coords = " ".join(f"{_n(px[i])} {_n(py[i])}" for i in range(a, b))
        parts.append("M" + coords)
    out = ""
    if parts:
        d = "".join(parts)
        out = _el("path", {"class": "series", "d": d, "fill": "none", "stroke-width": 2.0,
                           "stroke-linejoin": "round", **style})
    return out + "".join(dots)


def _lines_y_axis(ys: Mapping[str, np.ndarray], y_range: tuple[float, float] | None,
                  notes: list[str]) -> tuple[_Axis, tuple[float, float] | None]:
    """The y axis: ``y_range`` when usable (fixed), else nice bounds of the data."""
    if y_range is not None:
        lo, hi = float(min(y_range)), float(max(y_range))
        if math.isfinite(lo) and math.isfinite(hi) and abs(lo) <= MAX_ABS and abs(hi) <= MAX_ABS and hi > lo:
            return _linear_axis(lo, hi, fixed=True), (lo, hi)
        notes.append("y_range not usable, y axis fitted to the data")
    present = [y[~np.isnan(y)] for y in ys.values()]
    present = [v for v in present if v.size]
    if not present:
        return _linear_axis(0.0, 1.0), None
    return _linear_axis(min(float(v.min()) for v in present), max(float(v.max()) for v in present)), None


def _shade_mark(frame: _Frame, shade: tuple[float, float] | None, notes: list[str]) -> str:
    if shade is None:
        return ""
    a, b = float(min(shade)), float(max(shade))
    if not (math.isfinite(a) and math.isfinite(b) and abs(a) <= MAX_ABS and abs(b) <= MAX_ABS):
        notes.append("shaded interval not finite, not drawn")
        return ""
    a, b = max(a, frame.x.lo), min(b, frame.x.hi)
    if a > b:
        notes.append("shaded interval outside the x range")
        return ""
    x0, x1 = float(frame.px(a)), float(frame.px(b))
    tip = f"shaded: {format_value(float(min(shade)))} to {format_value(float(max(shade)))}"
    return _el("rect", {"class": "shade", "x": x0, "y": frame.top, "width": max(x1 - x0, 1.0),
                        "height": frame.height, "fill": "#888888", "fill-opacity": 0.18},
               children=_el("title", {}, tip))


def svg_lines(x: np.ndarray, series: dict[str, np.ndarray], *, title: str, x_label: str, y_label: str,
              y_range: tuple[float, float] | None = None, shade: tuple[float, float] | None = None) -> str:
    """Several named lines over a shared x, as an SVG fragment.

    Parameters
    ----------
    x : array_like
        Shared x values (e.g. rounds); sorted before drawing. Points whose x is
        NaN/inf are dropped and counted in a note.
    series : dict of str to array_like
        Named y arrays, each the length of ``x``. NaN/inf breaks a line (and is
        counted in a note); a lone point between gaps is drawn as a dot. Lines
        longer than MAX_LINE_POINTS are downsampled to bucket minima and maxima.
    title, x_label, y_label : str
        Plot title and axis labels (escaped).
    y_range : (float, float), optional
        Fixed y axis, e.g. ``(0, 1)`` for probabilities; points outside are
        clipped and counted in a note.
    shade : (float, float), optional
        An x interval to shade, e.g. the rounds of a network partition.

    Returns
    -------
    str
        An ``<svg>`` element with one ``path.series`` per series that has a run
        of two or more drawable points.

    Raises
    ------
    ValueError
        If a series does not have the length of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> svg = svg_lines(np.arange(5.0), {"a": np.array([0.0, 1, np.nan, 3, 4])}, title="t",
    ...                 x_label="round", y_label="p", y_range=(0, 4), shade=(1, 2))
    >>> svg.startswith("<svg"), svg.count('class="series"'), "NaN/inf" in svg
    (True, 1, True)
    """
    xs = _as_float_1d(x)
    ys = {}
    for name, values in series.items():
        y = _as_float_1d(values)
        if y.shape != xs.shape:
            raise ValueError(f"series {name!r} has {y.size} values but x has {xs.size}")
        ys[str(name)] = y
    notes: list[str] = []
    x_ok = _plottable(xs)
    if not x_ok.all():
        notes.append(f"{int(np.count_nonzero(~x_ok)):,} points with NaN/inf x dropped")
    order = np.argsort(xs[x_ok], kind="stable")
    xs = xs[x_ok][order]
    for name, y in list(ys.items()):
        y = y[x_ok][order]
        notes.extend(_dropped_note(name, y, "not drawn"))
        ys[name] = np.where(_plottable(y), y, np.nan)
    x_axis = _linear_axis(float(xs.min()), float(xs.max())) if xs.size else _linear_axis(0.0, 1.0)
    y_axis, clip = _lines_y_axis(ys, y_range, notes)
    if clip is not None:
        for name, y in ys.items():
            outside = int(np.count_nonzero((y < clip[0]) | (y > clip[1])))
            if outside:
                notes.append(f"{name}: {outside:,} points outside the y range (clipped)")
    styles = [_style(i, line=True) for i in range(len(ys))]

    def draw(frame: _Frame) -> tuple[str, str]:
        shade_svg = _shade_mark(frame, shade, notes)
        lines = "".join(
            _line_marks(frame, *_downsample_minmax(xs, y, MAX_LINE_POINTS), styles[i])
            for i, y in enumerate(ys.values())
        )
        if not any(np.any(~np.isnan(y)) for y in ys.values()):
            lines += _empty_message(frame)
        clip_id = "sg-clip-" + hashlib.sha1(lines.encode("utf-8", "replace")).hexdigest()[:12]
        clip_rect = _el("rect", {"x": frame.left, "y": frame.top, "width": frame.width, "height": frame.height})
        clip_def = _el("defs", {}, children=_el("clipPath", {"id": clip_id}, children=clip_rect))
        body = _el("g", {"clip-path": f"url(#{clip_id})"}, children=lines) if lines else ""
        return clip_def + shade_svg, _axes(frame, x_label, y_label) + body

    return _assemble(title, list(ys), styles, line=True, x_axis=x_axis, y_axis=y_axis,
                     bottom_band=48, draw=draw, notes=notes)


# --------------------------------------------------------------------------- bars


_BAR_LABEL_CHARS = 14


def _bar_label_layout(labels: Sequence[str], slot: float) -> tuple[list[str], bool, float]:
    """Shortened labels, whether they fit horizontally, and the band they need below the plot."""
    texts = [_shorten(label, _BAR_LABEL_CHARS) for label in labels]
    widest = max((len(t) for t in texts), default=0) * _CHAR_WIDTH
    if widest <= slot - 4:
        return texts, True, 36.0
    return texts, False, 24 + widest * 0.72


def _bar_labels(frame: _Frame, labels: Sequence[str], centres: np.ndarray, slot: float) -> str:
    """Category labels under the bars: horizontal when they fit, else slanted and thinned."""
    texts, horizontal, _ = _bar_label_layout(labels, slot)
    y = frame.bottom + 16
    if horizontal:
        return "".join(_el("text", {"class": "bar-label", "x": float(c), "y": y, "text-anchor": "middle"}, t)
                       for c, t in zip(centres, texts, strict=True))
    every = max(1, math.ceil(22 / slot))
    out = []
    for i in range(0, len(texts), every):
        c = float(centres[i])
        out.append(_el("text", {"class": "bar-label", "x": c, "y": y, "text-anchor": "end",
                                "transform": f"rotate(-45 {_n(c)} {_n(y)})"}, texts[i]))
    return "".join(out)


def svg_bars(labels: list[str], values: np.ndarray, *, title: str, y_label: str,
             highlight: list[bool] | None = None) -> str:
    """A bar chart of one value per label (1 to a few hundred bars), as an SVG fragment.

    Parameters
    ----------
    labels : list of str
        One label per bar; thinned and slanted when they do not fit (every
        bar keeps its full label as a tooltip).
    values : array_like
        Bar heights from zero (negative values go down). NaN/inf values are not
        drawn and are counted in a note.
    title, y_label : str
        Plot title and y axis label (escaped).
    highlight : list of bool, optional
        Bars to draw in the second palette colour (e.g. flagged sources); a
        legend is shown when any bar is highlighted.

    Returns
    -------
    str
        An ``<svg>`` element with one ``rect.bar`` per drawable value.

    Raises
    ------
    ValueError
        If ``labels``, ``values`` and ``highlight`` differ in length.

    Examples
    --------
    >>> import numpy as np
    >>> svg = svg_bars(["s1", "s2", "s3"], np.array([0.9, 0.2, 0.8]), title="reputation",
    ...                y_label="weight", highlight=[False, True, False])
    >>> svg.startswith("<svg"), svg.count('class="bar"'), svg.count('class="bar highlight"')
    (True, 2, 1)
    """
    v = _as_float_1d(values)
    labels = [str(label) for label in labels]
    if len(labels) != v.size:
        raise ValueError(f"{len(labels)} labels but {v.size} values")
    flags = [bool(h) for h in highlight] if highlight is not None else [False] * v.size
    if len(flags) != v.size:
        raise ValueError(f"{len(flags)} highlight flags but {v.size} values")
    notes = _dropped_note("values", v, "not drawn")
    ok = _plottable(v)
    drawable = v[ok]
    lo = min(0.0, float(drawable.min())) if drawable.size else 0.0
    hi = max(0.0, float(drawable.max())) if drawable.size else 1.0
    y_axis = _linear_axis(lo, hi)
    x_axis = _Axis(0.0, float(max(v.size, 1)), ())
    slot = _PLOT_WIDTH / max(v.size, 1)
    centres = _LEFT + (np.arange(v.size) + 0.5) * slot
    names, styles = [], []
    if any(flags):
        names, styles = ["highlighted", "other"], [_style(1, line=False), _style(0, line=False)]
    _, _, label_band = _bar_label_layout(labels, slot)

    bar_width = min(max(0.8 * slot, 0.5), 48.0)

    def draw(frame: _Frame) -> tuple[str, str]:
        zero = float(frame.py(0.0))
        out = []
        for i in np.flatnonzero(ok):
            top = float(frame.py(max(v[i], 0.0)))
            bottom = float(frame.py(min(v[i], 0.0)))
            colour = PALETTE[1] if flags[i] else PALETTE[0]
            tip = f"{labels[i]}: {format_value(float(v[i]))}"
            out.append(_el("rect", {"class": "bar highlight" if flags[i] else "bar",
                                    "x": float(centres[i]) - bar_width / 2, "y": top,
                                    "width": bar_width, "height": bottom - top,
                                    "fill": colour}, children=_el("title", {}, tip)))
        if not drawable.size:
            out.append(_empty_message(frame))
        if lo < 0:
            out.append(_el("line", {"class": "zero", "x1": frame.left, "x2": frame.left + frame.width,
                                    "y1": zero, "y2": zero, "stroke": _INK}))
        label_svg = _bar_labels(frame, labels, centres, slot)
        return "".join(out), _axes(frame, "", y_label, x_ticks=False) + label_svg

    return _assemble(title, names, styles, line=False, x_axis=x_axis, y_axis=y_axis,
                     bottom_band=label_band, draw=draw, notes=notes)


# --------------------------------------------------------------------------- document


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f7f7f7;color:#222}
main{max-width:980px;margin:0 auto;padding:24px 28px 40px;background:#fff}
h1{font-size:1.6em;margin:0.2em 0 0.8em}
h2{font-size:1.2em;margin:1.8em 0 0.6em;padding-bottom:4px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 20px;font-size:14px}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.group th{background:#f0f0f0}
td.key{padding-left:calc(10px + var(--depth,0) * 16px)}
.figure svg{width:100%;max-width:900px;height:auto;display:block}
footer{color:#777;font-size:12px;margin-top:32px}
""".strip()


def _cell(value: Any, tag: str = "td", css: str = "") -> str:
    classes = " ".join(c for c in (css, "num" if _is_number(value) else "") if c)
    cls = f' class="{classes}"' if classes else ""
    return f"<{tag}{cls}>{_escape(format_value(value))}</{tag}>"


def _summary_rows(summary: Mapping[str, Any], depth: int = 0) -> list[str]:
    """Key/value rows; nested mappings become a group heading and indented rows."""
    rows = []
    for key, value in summary.items():
        if isinstance(value, Mapping):
            rows.append(f'<tr class="group"><th colspan="2" style="--depth:{depth}">{_escape(key)}</th></tr>')
            rows.extend(_summary_rows(value, depth + 1))
        else:
            style = f' style="--depth:{depth}"' if depth else ""
            rows.append(f'<tr><td class="key"{style}>{_escape(key)}</td>{_cell(value)}</tr>')
    return rows


def _table(caption: str, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return (f'<table class="data"><caption>{_escape(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def render_report(title: str, summary: dict[str, Any], sections: list[tuple[str, str]],
                  tables: list[tuple[str, list[str], list[list[Any]]]] = ()) -> str:
    """A complete, self-contained HTML document (inline CSS, no scripts, no external files).

    Parameters
    ----------
    title : str
        Document title and main heading.
    summary : dict
        Key/value pairs shown first; numbers are formatted (thousands
        separators, about four significant digits), nested dicts become groups.
    sections : list of (heading, markup)
        Each heading (escaped) followed by its markup, inserted as it is: an
        SVG from this module or trusted HTML.
    tables : list of (caption, header, rows)
        Tables after the sections; every cell is formatted and escaped.

    Returns
    -------
    str
        The HTML document.

    Examples
    --------
    >>> import numpy as np
    >>> plot = svg_bars(["a", "b"], np.array([1.0, 2.0]), title="t", y_label="y")
    >>> doc = render_report("Run <1>", {"agents": 20000, "detection": {"precision": 0.987}},
    ...                     [("Plot", plot)], [("Rounds", ["round", "alarms"], [[1, 0]])])
    >>> doc.startswith("<!DOCTYPE html>"), "<title>Run &lt;1&gt;</title>" in doc, "20,000" in doc
    (True, True, True)
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(title)}</title><style>{_CSS}</style></head>",
        f"<body><main><h1>{_escape(title)}</h1>",
    ]
    if summary:
        parts.append('<section class="summary"><h2>Summary</h2><table class="summary"><tbody>')
        parts.extend(_summary_rows(summary))
        parts.append("</tbody></table></section>")
    for heading, markup in sections:
        parts.append(f'<section><h2>{_escape(heading)}</h2><div class="figure">{markup}</div></section>')
    for caption, header, rows in tables:
        parts.append(f"<section>{_table(caption, header, rows)}</section>")
    parts.append("<footer>Generated by swarmguard.</footer></main></body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, html: str) -> None:
    """Write ``html`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``).

    Readers see the old file or the new one, never a partial one. The file is
    UTF-8 (characters that cannot be encoded become ``?``) with mode 0644.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_report(os.path.join(folder, "report.html"), "<!DOCTYPE html><title>t</title>")
    >>> sorted(os.listdir(folder))
    ['report.html']
    >>> import shutil; shutil.rmtree(folder)
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(html.encode("utf-8", errors="replace"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
