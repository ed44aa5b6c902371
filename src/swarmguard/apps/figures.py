"""Plotly figures from NumPy data: histograms, lines over rounds, bar charts.

These builders return :class:`plotly.graph_objects.Figure` objects and know
nothing about the page they end up on: the HTML report
(:mod:`swarmguard.apps.report_html`) embeds them, and a live dashboard can
show the same figures. Plotly draws the axes, ticks, legends, hover and zoom;
what stays here is what Plotly cannot do for a self-contained file:

* Data are reduced before they become a figure: histograms are binned with
  NumPy (a figure never carries 10**6 raw values), lines longer than
  :data:`MAX_LINE_POINTS` are downsampled to each bucket's minimum and maximum
  (so spikes stay visible), so a report over 10**6-value series stays small.
* NaN, ±inf and values beyond ±MAX_ABS (1e300) are never drawn; they are
  counted in notes shown under the plot and kept in ``fig.layout.meta["notes"]``
  (:func:`figure_notes`). A NaN inside a line breaks it.
* Empty series, a single value and all-equal values give a readable figure
  (a "no data" message when nothing is drawable), never an exception.
* Colours come from the Okabe–Ito palette (:data:`PALETTE`), which stays
  distinguishable with the common colour-vision deficiencies.
* Every text (titles, axis titles, series names, hover text) is HTML-escaped
  before Plotly sees it, so names are shown as written, never as markup.
* The output is deterministic: the same input gives the same figure JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape as _html_escape
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "MAX_ABS",
    "MAX_BINS",
    "MAX_LINE_POINTS",
    "PALETTE",
    "bars_figure",
    "figure_notes",
    "histogram_figure",
    "lines_figure",
    "plain_text",
]

#: Okabe–Ito colour-blind-safe palette, in the order series are coloured.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
#: Dash patterns used for lines once the palette has been used up.
_DASHES = ("solid", "dash", "dot", "dashdot")
#: Values with a larger magnitude are treated like inf: dropped and counted.
MAX_ABS = 1e300
#: ``bins`` above this are reduced to it.
MAX_BINS = 1000
#: Lines with more points are downsampled to at most about this many.
MAX_LINE_POINTS = 2000
#: Lines with at most this many points also mark each point (lone points stay visible).
_MARKER_POINTS = 200
#: Spans below this are treated as empty.
_TINY = 1e-290
_HEIGHT = 380


# --------------------------------------------------------------------------- text and data


def plain_text(text: object) -> str:
    """``text`` escaped for Plotly's text fields (which read a few HTML tags and entities),
    so it is shown as written; characters XML forbids become U+FFFD."""
    s = "".join(ch if ch in "\t\n" or (ord(ch) >= 0x20 and not 0xD800 <= ord(ch) <= 0xDFFF
                                       and ch not in "\ufffe\uffff") else "\ufffd" for ch in str(text))
    return _html_escape(s, quote=False)


def _number(v: float) -> str:
    """A value for notes and hover text: about four significant digits."""
    if v == 0 or not math.isfinite(v):
        return str(v) if not math.isfinite(v) else "0"
    a = abs(v)
    if 1e-3 <= a < 1e6:
        return f"{v:,.{max(0, 3 - math.floor(math.log10(a)))}f}".rstrip("0").rstrip(".")
    return f"{v:.3e}"


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


def _padded(lo: float, hi: float, fraction: float = 0.02) -> list[float]:
    lo, hi = _expand_degenerate(lo, hi)
    pad = (hi - lo) * fraction
    return [lo - pad, hi + pad]


def figure_notes(fig: go.Figure) -> list[str]:
    """The notes of a figure from this module (values not drawn, clipped, ...)."""
    meta = fig.layout.meta
    return list(meta.get("notes", [])) if isinstance(meta, Mapping) else []


def _base_figure(title: str, x_label: str, y_label: str, notes: Sequence[str], *, legend: bool) -> go.Figure:
    """A figure with this module's look; ``notes`` are shown under the plot and kept in meta."""
    fig = go.Figure()
    shown = list(notes)
    bottom = 64 + 16 * min(len(shown), 6)
    fig.update_layout(
        template=go.layout.Template(),          # no default template: each figure's JSON stays small
        title={"text": plain_text(title), "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#333"},
        paper_bgcolor="white", plot_bgcolor="white", height=_HEIGHT + 16 * min(len(shown), 6),
        margin={"l": 72, "r": 24, "t": 64 if legend else 48, "b": bottom},
        showlegend=legend, hovermode="closest",
        legend={"orientation": "h", "x": 0.0, "y": 1.02, "xanchor": "left", "yanchor": "bottom"},
        meta={"notes": shown},
    )
    axis = {"showgrid": True, "gridcolor": "#e3e3e3", "zeroline": False, "showline": True,
            "linecolor": "#333", "ticks": "outside", "automargin": True}
    fig.update_xaxes(title_text=plain_text(x_label), **axis)
    fig.update_yaxes(title_text=plain_text(y_label), **axis)
    if shown:
        text = "<br>".join(plain_text(n) for n in shown[:6])
        if len(shown) > 6:
            text += f"<br>\u2026 and {len(shown) - 6} more"
        fig.add_annotation(name="notes", text=text, xref="paper", yref="paper", x=0.0, y=0.0,
                           xanchor="left", yanchor="top", yshift=-44, showarrow=False, align="left",
                           font={"size": 11, "color": "#666"})
    return fig


def _empty_message(fig: go.Figure) -> None:
    fig.add_annotation(name="empty", text="no data to plot", xref="paper", yref="paper", x=0.5, y=0.5,
                       showarrow=False, font={"size": 14, "color": "#777"})


# --------------------------------------------------------------------------- histogram


def _histogram_values(name: str, values: Any, log_x: bool, notes: list[str]) -> np.ndarray:
    """Drawable values of one series, in binned units (log10 when ``log_x``)."""
    v = _as_float_1d(values)
    notes.extend(_dropped_note(name, v))
    v = v[_plottable(v)]
    if log_x:
        nonpositive = int(np.count_nonzero(v <= 0))
        if nonpositive:
            notes.append(f"{name}: {nonpositive:,} values \u2264 0 dropped (log scale)")
        v = np.log10(v[v > 0])
    return v


def histogram_figure(series: Mapping[str, Any], *, bins: int = 50, log_x: bool = False, log_y: bool = False,
                     vlines: Mapping[str, float] | None = None, title: str, x_label: str,
                     y_label: str = "agents (count)") -> go.Figure:
    """Overlaid histograms of named series over shared bins.

    Parameters
    ----------
    series : mapping of str to array_like
        Named samples, e.g. ``{"honest": ..., "compromised": ...}``. NaN, ±inf
        and values beyond ±MAX_ABS are dropped and counted in a note.
    bins : int
        Number of equal-width bins (in log space when ``log_x``), shared by all
        series; at most MAX_BINS. All-equal values make one bin around them.
    log_x : bool
        Bin and draw x on a log scale; values <= 0 are dropped and counted.
    log_y : bool
        Logarithmic count axis, ticks at powers of ten, from 10**-0.5 so that
        a count of 1 still shows.
    vlines : mapping of str to float, optional
        Named vertical lines (e.g. the decision threshold), labelled
        ``"name = value"``; the x axis is widened to include them. Lines that
        are not finite (or <= 0 on a log scale) are noted, not drawn.
    title, x_label, y_label : str
        Title and axis titles, with their units.

    Returns
    -------
    plotly.graph_objects.Figure
        One bar trace per series, holding only its non-empty bins: ``x`` the
        bin centres, ``width`` the bin width (linear scale), ``y`` the counts,
        ``customdata`` each bin's ``[low, high)`` edges.

    Raises
    ------
    ValueError
        If ``bins`` is below 1.

    Examples
    --------
    >>> import numpy as np
    >>> fig = histogram_figure({"a": np.array([0.0, 1.0, 1.0, np.nan])}, bins=2, title="t", x_label="x")
    >>> [t.y.tolist() for t in fig.data], figure_notes(fig)
    ([[1, 2]], ['a: 1 NaN/inf dropped'])
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    bins = min(int(bins), MAX_BINS)
    notes: list[str] = []
    data = {str(k): _histogram_values(str(k), v, log_x, notes) for k, v in series.items()}
    for name, v in data.items():
        if v.size == 0:
            notes.append(f"{name}: no values")
    marks = []
    for name, value in (vlines or {}).items():
        v = float(value)
        if not (math.isfinite(v) and abs(v) <= MAX_ABS):
            notes.append(f"{name}: not finite, line not drawn")
        elif log_x and v <= 0:
            notes.append(f"{name}: \u2264 0, line not drawn (log scale)")
        else:
            marks.append((str(name), v, math.log10(v) if log_x else v))
    present = [v for v in data.values() if v.size]
    fig = _base_figure(title, x_label, y_label, notes, legend=len(data) > 1)
    positions = [m[2] for m in marks]
    max_count = 0
    if present:
        lo = min(float(v.min()) for v in present)
        hi = max(float(v.max()) for v in present)
        wide_lo, wide_hi = _expand_degenerate(lo, hi, log=log_x)
        if (wide_lo, wide_hi) != (lo, hi):
            bins = 1            # all values (nearly) equal: one bar around them
        edges = np.linspace(wide_lo, wide_hi, bins + 1)
        span = [wide_lo, wide_hi, *positions]
        opacity = 0.85 if len(data) == 1 else 0.55
        for i, (name, v) in enumerate(data.items()):
            counts = np.histogram(v, bins=edges)[0]
            nz = np.flatnonzero(counts)
            max_count = max(max_count, int(counts.max(initial=0)))
            low, high = edges[nz], edges[nz + 1]
            if log_x:
                centres = 10.0 ** ((low + high) / 2)          # the geometric centre, without overflow
                low, high = 10.0 ** low, 10.0 ** high
                width = None        # on a log axis Plotly sizes bars from their (evenly spaced) positions
            else:
                centres = (low + high) / 2
                width = high - low
            colour = PALETTE[i % len(PALETTE)]
            fig.add_trace(go.Bar(
                name=plain_text(name), x=centres, y=counts[nz], width=width,
                customdata=np.column_stack([low, high]), marker={"color": colour, "line": {"width": 0}},
                opacity=opacity,
                hovertemplate=f"{plain_text(name)}: %{{y:,}} in [%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}})"
                              "<extra></extra>"))
    else:
        span = positions or [0.0, 1.0]
        _empty_message(fig)
    x_lo, x_hi = _padded(min(span), max(span))
    fig.update_xaxes(type="log" if log_x else "linear", range=[x_lo, x_hi])
    if log_y:
        top = max(1, math.ceil(math.log10(max(max_count, 1)) - 1e-9))
        fig.update_yaxes(type="log", dtick=1, range=[-0.5, top + 0.05], rangemode="normal")
    else:
        fig.update_yaxes(type="linear", rangemode="tozero")
    fig.update_layout(barmode="overlay", bargap=0.0)
    for k, (name, value, pos) in enumerate(marks):
        fig.add_shape(type="line", name=plain_text(name), xref="x", yref="paper", x0=value, x1=value, y0=0,
                      y1=1, line={"color": "#000", "width": 1.5, "dash": "dash"})
        # annotations on a log axis take log10 positions; shapes take data values
        right = (pos - x_lo) > 0.7 * (x_hi - x_lo)        # label on the line's left near the right edge
        fig.add_annotation(name="vline", text=plain_text(f"{name} = {_number(value)}"), xref="x", yref="paper",
                           x=pos, y=1.0 - 0.07 * k, xanchor="right" if right else "left", yanchor="top",
                           xshift=-4 if right else 4, showarrow=False, bgcolor="rgba(255,255,255,0.8)",
                           font={"size": 11})
    return fig


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


def _with_gaps(y: np.ndarray) -> list[float | None]:
    """A y list for Plotly: None (a gap in the line) where nothing is drawn."""
    return [None if math.isnan(v) else float(v) for v in y.tolist()]


def lines_figure(x: Any, series: Mapping[str, Any], *, title: str, x_label: str, y_label: str,
                 y_range: tuple[float, float] | None = None, shade: tuple[float, float] | None = None,
                 shade_label: str = "", y_log: bool = False, x_range: tuple[float, float] | None = None,
                 y_integer: bool = False) -> go.Figure:
    """Several named lines over a shared x (e.g. rounds).

    Parameters
    ----------
    x : array_like
        Shared x values; sorted before drawing. Points whose x is NaN/inf are
        dropped and counted in a note.
    series : mapping of str to array_like
        Named y arrays, each the length of ``x``. NaN/inf breaks a line (and is
        counted in a note). Lines longer than MAX_LINE_POINTS are downsampled
        to bucket minima and maxima; lines of at most 200 points mark each
        point, so a lone point between gaps stays visible.
    title, x_label, y_label : str
        Title and axis titles, with their units.
    y_range : (float, float), optional
        A fixed y axis, e.g. ``(0, 1)`` for probabilities; points outside are
        counted in a note (still in the figure, outside the initial view).
    shade : (float, float), optional
        An x interval to shade, e.g. the rounds of a network partition,
        labelled ``shade_label``.
    y_log : bool
        A logarithmic y axis (values <= 0 are not drawn and are counted).
    x_range : (float, float), optional
        The x span to show (e.g. all rounds, when the series start later);
        default: the data's.
    y_integer : bool
        The y values are counts: integer ticks, the axis from zero.

    Returns
    -------
    plotly.graph_objects.Figure
        One scatter trace per series (``None`` where a line breaks).

    Raises
    ------
    ValueError
        If a series does not have the length of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> fig = lines_figure(np.arange(3.0), {"a": np.array([0.0, np.nan, 2.0])}, title="t",
    ...                    x_label="round", y_label="agents")
    >>> list(fig.data[0].y), figure_notes(fig)
    ([0.0, None, 2.0], ['a: 1 NaN/inf not drawn'])
    """
    xs = _as_float_1d(x)
    ys: dict[str, np.ndarray] = {}
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
        drawable = _plottable(y)
        if y_log:
            nonpositive = int(np.count_nonzero(drawable & (y <= 0)))
            if nonpositive:
                notes.append(f"{name}: {nonpositive:,} values \u2264 0 not drawn (log scale)")
            drawable &= y > 0
        ys[name] = np.where(drawable, y, np.nan)
    fixed = None
    if y_range is not None:
        lo, hi = float(min(y_range)), float(max(y_range))
        if math.isfinite(lo) and math.isfinite(hi) and abs(lo) <= MAX_ABS and abs(hi) <= MAX_ABS and hi > lo:
            fixed = (lo, hi)
            for name, y in ys.items():
                outside = int(np.count_nonzero((y < lo) | (y > hi)))
                if outside:
                    notes.append(f"{name}: {outside:,} points outside the y range (clipped)")
        else:
            notes.append("y_range not usable, y axis fitted to the data")
    shade_at = None
    if shade is not None:
        a, b = float(min(shade)), float(max(shade))
        if math.isfinite(a) and math.isfinite(b) and abs(a) <= MAX_ABS and abs(b) <= MAX_ABS:
            shade_at = (a, b)
        else:
            notes.append("shaded interval not finite, not drawn")
    fig = _base_figure(title, x_label, y_label, notes, legend=len(ys) > 1)
    for i, (name, y) in enumerate(ys.items()):
        dx, dy = _downsample_minmax(xs, y, MAX_LINE_POINTS)
        colour = PALETTE[i % len(PALETTE)]
        dash = _DASHES[(i // len(PALETTE)) % len(_DASHES)]
        fig.add_trace(go.Scatter(
            name=plain_text(name), x=dx, y=_with_gaps(dy), connectgaps=False,
            mode="lines+markers" if dx.size <= _MARKER_POINTS else "lines",
            line={"color": colour, "width": 2, "dash": dash}, marker={"size": 5, "color": colour},
            hovertemplate=f"{plain_text(name)}<br>{plain_text(x_label)}: %{{x:.4g}}<br>"
                          f"{plain_text(y_label)}: %{{y:.4g}}<extra></extra>"))
    if not any(np.any(~np.isnan(y)) for y in ys.values()):
        _empty_message(fig)
    span = [float(v) for v in x_range] if x_range is not None else ([float(xs.min()), float(xs.max())] if xs.size
                                                                      else [])
    if span and all(math.isfinite(v) and abs(v) <= MAX_ABS for v in span):
        fig.update_xaxes(range=_padded(min(span), max(span)))
    if fixed is not None:
        if y_log:
            fixed = (math.log10(fixed[0]), math.log10(fixed[1])) if fixed[0] > 0 else None
        if fixed is not None:
            pad = (fixed[1] - fixed[0]) * 0.02
            fig.update_yaxes(range=[fixed[0] - pad, fixed[1] + pad])
    fig.update_yaxes(type="log" if y_log else "linear", exponentformat="power" if y_log else "B")
    if y_log:
        fig.update_yaxes(dtick="D2")        # minor labels at 2 and 5 only
    if y_integer:
        top = max((float(np.nanmax(y)) for y in ys.values() if np.any(~np.isnan(y))), default=0.0)
        top = max(top, 1.0)
        # from just below zero, so points at zero are not cut by the axis
        fig.update_yaxes(tickformat=",d", range=[-0.04 * top, 1.05 * top], **({"dtick": 1} if top <= 5 else {}))
    if shade_at is not None:
        a, b = shade_at
        fig.add_vrect(x0=a, x1=b, fillcolor="#888888", opacity=0.18, line_width=0, layer="below", name="shade")
        if shade_label:
            fig.add_annotation(name="shade", text=plain_text(shade_label), xref="x", yref="paper",
                               x=(a + b) / 2, y=1.0, yanchor="bottom", showarrow=False,
                               font={"size": 11, "color": "#555"})
    return fig


# --------------------------------------------------------------------------- bars


def bars_figure(labels: Sequence[Any], values: Any, *, title: str, y_label: str, x_label: str = "",
                highlight: Sequence[bool] | None = None,
                highlight_names: tuple[str, str] = ("highlighted", "other")) -> go.Figure:
    """A bar chart of one value per label, in the labels' order.

    Parameters
    ----------
    labels : sequence
        One label per bar (shown as text, categories kept in order).
    values : array_like
        Bar heights from zero. NaN/inf values are not drawn and are counted in a note.
    title, y_label, x_label : str
        Title and axis titles, with their units.
    highlight : sequence of bool, optional
        Bars drawn in the second palette colour (e.g. flagged sources), as a
        second trace; ``highlight_names`` names the two traces in the legend.

    Returns
    -------
    plotly.graph_objects.Figure
        One bar trace (two with highlights) of the drawable values.

    Raises
    ------
    ValueError
        If ``labels``, ``values`` and ``highlight`` differ in length.

    Examples
    --------
    >>> import numpy as np
    >>> fig = bars_figure(["s1", "s2", "s3"], np.array([0.9, 0.2, 0.8]), title="t", y_label="reports",
    ...                   highlight=[False, True, False])
    >>> [(t.name, list(t.x)) for t in fig.data]
    [('highlighted', ['s2']), ('other', ['s1', 's3'])]
    """
    v = _as_float_1d(values)
    names = [plain_text(label) for label in labels]
    if len(names) != v.size:
        raise ValueError(f"{len(names)} labels but {v.size} values")
    flags = np.array([bool(h) for h in highlight], dtype=bool) if highlight is not None else np.zeros(v.size, bool)
    if flags.size != v.size:
        raise ValueError(f"{flags.size} highlight flags but {v.size} values")
    notes = _dropped_note("values", v, "not drawn")
    ok = _plottable(v)
    fig = _base_figure(title, x_label, y_label, notes, legend=bool(flags.any()))
    groups = [(highlight_names[0], flags, PALETTE[1]), (highlight_names[1], ~flags, PALETTE[0])] if flags.any() \
        else [("values", np.ones(v.size, bool), PALETTE[0])]
    for name, mask, colour in groups:
        rows = np.flatnonzero(mask & ok)
        if not rows.size and flags.any():
            continue
        fig.add_trace(go.Bar(name=plain_text(name), x=[names[i] for i in rows], y=v[rows],
                             marker={"color": colour},
                             hovertemplate="%{x}: %{y:,.4g}<extra>" + plain_text(name) + "</extra>"))
    if not ok.any():
        _empty_message(fig)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=names, tickangle=-45 if len(names) > 12
                     else 0)
    fig.update_layout(barmode="overlay", bargap=0.2)
    return fig
