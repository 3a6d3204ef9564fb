"""The console's server-drawn SVG charts, parsed with xml.etree: bar heights proportional to the
data, labels and titles as stated, text escaped, nothing a strict CSP would block."""
from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from device_ca.web.console.charts import HEIGHT, TOP, BOTTOM, Bar, bar_chart, expiry_histogram, revocations_chart

NS = {"svg": "http://www.w3.org/2000/svg"}
NOW = dt.datetime(2026, 12, 5, 6, 0, tzinfo=dt.timezone.utc)
PLOT_H = HEIGHT - TOP - BOTTOM


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def _bars(root: ET.Element) -> list[ET.Element]:
    return root.findall("svg:g[@class='bars']/svg:rect", NS)


def test_expiry_bars_are_proportional_and_titled():
    counts = [0, 3, 12, 6, 0, 0, 1, 0, 24]
    edges = [NOW + dt.timedelta(days=10 * i) for i in range(10)]
    root = _parse(expiry_histogram(counts, edges))
    bars = _bars(root)
    assert [int(b.get("data-count")) for b in bars] == counts
    heights = [float(b.get("height")) for b in bars]
    assert heights[8] == pytest.approx(PLOT_H) and heights[0] == 0
    for count, height in zip(counts, heights):
        assert height == pytest.approx(count * PLOT_H / 24, abs=0.06)
    for bar in bars:                                     # each bar stands on the x axis
        assert float(bar.get("y")) + float(bar.get("height")) == pytest.approx(TOP + PLOT_H, abs=0.06)
    titles = [b.find("svg:title", NS).text for b in bars]
    assert titles[1] == "3 certificates expire in days 10\u201320 (2026-12-15 to 2026-12-25)"
    assert titles[6] == "1 certificate expires in days 60\u201370 (2027-02-03 to 2027-02-13)"
    labels = [t.text for t in root.findall("svg:g[@class='bars']/svg:text", NS)]
    assert labels == [f"{10 * i}\u2013{10 * i + 10}" for i in range(9)]
    assert root.find("svg:title", NS).text == "Certificates expiring in the next 90 days"
    assert root.get("role") == "img"
    y_ticks = [t.text for t in root.findall("svg:g[@class='ticks']/svg:text", NS)]
    assert y_ticks[0] == "0" and y_ticks[-1] == "24"


def test_revocations_per_day_label_every_week_back_from_today():
    counts = [0] * 30
    counts[29], counts[27], counts[3] = 2, 1, 5
    first = dt.date(2026, 11, 6)
    root = _parse(revocations_chart(counts, first))
    bars = _bars(root)
    assert len(bars) == 30 and [int(b.get("data-count")) for b in bars] == counts
    assert float(bars[3].get("height")) == pytest.approx(PLOT_H)
    assert float(bars[29].get("height")) == pytest.approx(PLOT_H * 2 / 5, abs=0.06)
    assert bars[29].find("svg:title", NS).text == "2 revocations on 2026-12-05"
    assert bars[27].find("svg:title", NS).text == "1 revocation on 2026-12-03"
    labels = [t.text for t in root.findall("svg:g[@class='bars']/svg:text", NS)]
    assert labels == ["11-07", "11-14", "11-21", "11-28", "12-05"]


def test_no_data_draws_flat_bars_not_a_division_by_zero():
    root = _parse(revocations_chart([0] * 30, dt.date(2026, 11, 6)))
    assert {float(b.get("height")) for b in _bars(root)} == {0.0}
    assert [t.text for t in root.findall("svg:g[@class='ticks']/svg:text", NS)] == ["0", "1"]


def test_text_is_escaped_and_nothing_inline_runs():
    hostile = '<script>alert(1)</script>" onload="x'
    svg = bar_chart([Bar(label=hostile, count=1, title=hostile)], title=hostile, x_label="&", y_label="<",
                    css_class='x" onclick="y')
    root = _parse(svg)                                   # still well-formed XML
    assert root.find("svg:title", NS).text == hostile
    assert _bars(root)[0].find("svg:title", NS).text == hostile
    assert root.get("class") == 'chart x" onclick="y' and root.get("onclick") is None
    assert "<script" not in svg and "style=" not in svg
    for element in root.iter():
        assert not [name for name in element.attrib if name.lower().startswith("on")]


def test_edges_must_match_the_counts():
    with pytest.raises(ValueError):
        expiry_histogram([1, 2], [NOW, NOW + dt.timedelta(days=10)])
