"""Bar charts drawn on the server as inline SVG (SVG 1.1), for pages that run no script.

Pure functions from counts to an SVG string: no style attribute and no script, so the page's
Content-Security-Policy (``style-src 'self'``, no ``unsafe-inline``) holds; colours come from
classes in console.css. Each bar carries its count as a ``<title>`` (what a screen reader and a
hovering pointer read) and as ``data-count``; the chart as a whole is ``role="img"`` with a title.
Every text is escaped.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 16, 44          # margins around the plot: axis labels live there


@dataclass(frozen=True)
class Bar:
    label: str          # under the bar (may be empty: a busy axis labels only some bars)
    count: int
    title: str          # what the bar means, with its count


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _ticks(top: int) -> list[int]:
    """0, the top and up to three round steps between."""
    if top <= 4:
        return list(range(0, top + 1))
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000)
                + tuple(10 ** n for n in range(5, 13)) if top / s <= 4)
    return [*range(0, top, step), top] if top % step else list(range(0, top + 1, step))


def bar_chart(bars: Sequence[Bar], *, title: str, x_label: str, y_label: str, css_class: str) -> str:
    """A vertical bar chart, bar heights proportional to the counts (the tallest fills the plot)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max([b.count for b in bars] + [1])
    slot = plot_w / max(len(bars), 1)
    bottom = TOP + plot_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {_attr(css_class)}" role="img" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">',
           f"<title>{escape(title)}</title>",
           f'<g class="axes"><line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}"/>'
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/></g>',
           '<g class="ticks">']
    for tick in _ticks(top):
        y = bottom - tick * plot_h / top
        out.append(f'<text class="y-tick" x="{LEFT - 6}" y="{y:.1f}" text-anchor="end" '
                   f'dominant-baseline="middle">{tick}</text>')
    out.append('</g><g class="bars">')
    for i, bar in enumerate(bars):
        height = bar.count * plot_h / top
        x = LEFT + i * slot + slot * 0.1
        out.append(f'<rect class="bar" x="{x:.1f}" y="{bottom - height:.1f}" width="{slot * 0.8:.1f}" '
                   f'height="{height:.1f}" data-count="{int(bar.count)}"><title>{escape(bar.title)}</title></rect>')
        if bar.label:
            out.append(f'<text class="x-tick" x="{LEFT + (i + 0.5) * slot:.1f}" y="{bottom + 16}" '
                       f'text-anchor="middle">{escape(bar.label)}</text>')
    out.append("</g>")
    out.append(f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" '
               f'text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text class="axis-label" x="12" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {TOP + plot_h / 2:.1f})">{escape(y_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def expiry_histogram(counts: Sequence[int], edges: Sequence[dt.datetime]) -> str:
    """Certificates by when they expire: ``counts[i]`` in [``edges[i]``, ``edges[i+1]``), the first
    edge being now. Bars are labelled by day offsets (``0-10``), titles carry the dates."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"{len(counts)} bars need {len(counts) + 1} edges, not {len(edges)}")
    start = edges[0]
    bars = []
    for count, lower, upper in zip(counts, edges, edges[1:]):
        first, last = (lower - start).days, (upper - start).days
        bars.append(Bar(label=f"{first}\u2013{last}", count=count,
                        title=f"{_plural(count, 'certificate expires', 'certificates expire')} in days "
                              f"{first}\u2013{last} ({lower:%Y-%m-%d} to {upper:%Y-%m-%d})"))
    days = (edges[-1] - start).days
    return bar_chart(bars, title=f"Certificates expiring in the next {days} days", x_label="days from now",
                     y_label="certificates", css_class="expiry")


def revocations_chart(counts: Sequence[int], first_day: dt.date) -> str:
    """Revocations per day, ``counts[i]`` on ``first_day + i``; every seventh day is labelled
    (``MM-DD``), counting back from the last, and every bar's title has its date."""
    bars = []
    last = len(counts) - 1
    for i, count in enumerate(counts):
        day = first_day + dt.timedelta(days=i)
        bars.append(Bar(label=f"{day:%m-%d}" if (last - i) % 7 == 0 else "", count=count,
                        title=f"{_plural(count, 'revocation', 'revocations')} on {day:%Y-%m-%d}"))
    return bar_chart(bars, title=f"Revocations per day, last {len(counts)} days", x_label="day (UTC)",
                     y_label="revocations", css_class="revocations")
