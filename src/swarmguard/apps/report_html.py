"""Self-contained HTML reports: Plotly figures, summaries and tables in one file.

:func:`render_report` assembles a page from a summary (key/value rows),
sections (a :class:`plotly.graph_objects.Figure`, e.g. from
:mod:`swarmguard.apps.figures`, or trusted HTML) and tables;
:func:`write_report` writes it atomically. The page is one file that works
offline: plotly.js (the version bundled with the installed ``plotly``) is
inlined once, every figure's data is inline JSON, the CSS is inline, and
nothing is loaded from elsewhere (no CDN, no fonts, no images). The figures
keep Plotly's hover and zoom (double-click resets the view).

Rules the page follows:

* All text is HTML-escaped; characters XML forbids become U+FFFD. Figures'
  texts are escaped by their builders (:func:`swarmguard.apps.figures.plain_text`).
* Numbers are formatted for reading (:func:`format_value`).
* The output is deterministic: the same input gives the same bytes (figure
  ids are numbered, not random).
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from html import escape as _html_escape
from typing import Any

import numpy as np

__all__ = [
    "escape",
    "format_value",
    "plotly_js",
    "render_report",
    "table_html",
    "write_report",
]

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: Plotly's options for every figure: no logo link, no cloud button, resizes with the page.
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False}


def escape(text: object) -> str:
    """Escape text for HTML and XML, replacing characters XML 1.0 forbids."""
    return _html_escape(_XML_INVALID.sub("\ufffd", str(text)), quote=True)


_escape = escape


@functools.cache
def plotly_js() -> str:
    """The plotly.js bundle of the installed ``plotly`` package, as text (about 4.8 MB)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


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


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


# --------------------------------------------------------------------------- document


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f7f7f7;color:#222}
main{max-width:1280px;margin:0 auto;padding:24px 28px 40px;background:#fff}
h1{font-size:1.6em;margin:0.2em 0 0.8em}
h2{font-size:1.2em;margin:1.8em 0 0.6em;padding-bottom:4px;border-bottom:1px solid #ddd}
p{line-height:1.45;max-width:60em}
table{border-collapse:collapse;margin:8px 0 20px;font-size:14px}
caption,p.caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0;font-size:14px;max-width:none}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f0f0f0;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.data{font-size:13px}
table.data td{white-space:nowrap}
tr.group th{background:#f0f0f0}
td.key{padding-left:calc(10px + var(--depth,0) * 16px)}
.scroll{max-height:560px;overflow:auto;border:1px solid #eee}
.scroll table{margin:0}
.figure{width:100%}
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


def table_html(caption: str, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A table as HTML (every cell formatted and escaped; more than 20 rows scroll), for a section."""
    head = "".join(f"<th>{_escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    if len(rows) > 20:      # a long table scrolls in a box, its caption above it (not scrolled away)
        return (f'<p class="caption">{_escape(caption)}</p><div class="scroll"><table class="data">'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    return (f'<table class="data"><caption>{_escape(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _figure_html(fig: Any, k: int) -> str:
    """One figure as a div and the inline script that draws it (plotly.js is on the page once)."""
    import plotly.io as pio

    height = fig.layout.height or 420
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"figure-{k}",
                       config=_PLOTLY_CONFIG, default_width="100%", default_height=f"{height}px",
                       validate=False)


def render_report(title: str, summary: dict[str, Any], sections: list[tuple[str, Any]],
                  tables: list[tuple[str, list[str], list[list[Any]]]] = ()) -> str:
    """A complete, self-contained HTML document (inline CSS, inline plotly.js, no external files).

    Parameters
    ----------
    title : str
        Document title and main heading.
    summary : dict
        Key/value pairs shown first; numbers are formatted (thousands
        separators, about four significant digits), nested dicts become groups.
    sections : list of (heading, content)
        Each heading (escaped) followed by its content: a
        :class:`plotly.graph_objects.Figure` (drawn by the inline plotly.js,
        with hover and zoom) or trusted HTML, inserted as it is (build it
        with :func:`escape`).
    tables : list of (caption, header, rows)
        Tables after the sections; every cell is formatted and escaped; long
        tables scroll.

    Returns
    -------
    str
        The HTML document. plotly.js is included only when some section is a figure.

    Examples
    --------
    >>> import numpy as np
    >>> from swarmguard.apps.figures import bars_figure
    >>> plot = bars_figure(["a", "b"], np.array([1.0, 2.0]), title="t", y_label="y")
    >>> doc = render_report("Run <1>", {"agents": 20000, "detection": {"precision": 0.987}},
    ...                     [("Plot", plot)], [("Rounds", ["round", "alarms"], [[1, 0]])])
    >>> doc.startswith("<!DOCTYPE html>"), "<title>Run &lt;1&gt;</title>" in doc, "20,000" in doc
    (True, True, True)
    >>> 'id="figure-0"' in doc, "<script src" in doc
    (True, False)
    """
    figures = [not isinstance(content, str) for _, content in sections]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(title)}</title><style>{_CSS}</style>",
    ]
    if any(figures):
        # "</script" cannot occur inside the bundle's text, or the page would end early
        js = plotly_js().replace("</script", "<\\/script")
        parts.append(f'<script type="text/javascript">{js}</script>')
    parts.append(f"</head><body><main><h1>{_escape(title)}</h1>")
    if summary:
        parts.append('<section class="summary"><h2>Summary</h2><table class="summary"><tbody>')
        parts.extend(_summary_rows(summary))
        parts.append("</tbody></table></section>")
    k = 0
    for (heading, content), is_figure in zip(sections, figures, strict=True):
        if is_figure:
            markup = _figure_html(content, k)
            k += 1
        else:
            markup = content
        parts.append(f'<section><h2>{_escape(heading)}</h2><div class="figure">{markup}</div></section>')
    for caption, header, rows in tables:
        parts.append(f"<section>{table_html(caption, header, rows)}</section>")
    parts.append("<footer>Generated by swarmguard (figures: Plotly, inline; works offline).</footer>"
                 "</main></body></html>\n")
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
