"""The console operations pages' pure helpers: the batch progress bar's segments and the outbox age."""
from __future__ import annotations

import datetime as dt
from collections import Counter

from device_ca.web.console.operations import BAR_WIDTH, age, progress, tail_page

T = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_progress_segments_fill_the_bar_in_state_order():
    segments = progress(3, Counter(failed=1, issued=2))
    assert segments == [("issued", 2, 0, 160), ("failed", 1, 160, 80)]
    assert sum(width for *_, width in segments) == BAR_WIDTH


def test_progress_rounding_never_leaves_a_gap_and_empty_states_are_left_out():
    segments = progress(7, Counter(issued=1, failed=1, reserved=1, pending=4))
    assert [s[0] for s in segments] == ["issued", "failed", "reserved", "pending"]
    for (_, _, x, width), (_, _, following, _) in zip(segments, segments[1:]):
        assert x + width == following
    assert segments[-1][2] + segments[-1][3] == BAR_WIDTH
    assert progress(0, Counter()) == []
    assert progress(10, Counter(issued=5)) == [("issued", 5, 0, BAR_WIDTH // 2)]     # the rest is the track


def test_age_is_short_and_never_negative():
    assert age(None, T) is None
    assert age(T, T - dt.timedelta(seconds=5)) == "0s"
    assert age(T, T + dt.timedelta(seconds=45)) == "45s"
    assert age(T, T + dt.timedelta(minutes=12, seconds=3)) == "12m"
    assert age(T, T + dt.timedelta(hours=3, minutes=5)) == "3h 5m"
    assert age(T, T + dt.timedelta(days=2, hours=4, minutes=1)) == "2d 4h"


def test_the_audit_tail_pages_back_from_the_head_without_gaps_or_overlaps():
    assert tail_page(0, None) == (0, 0, None, None)
    assert tail_page(7, None, 3) == (4, 7, 4, None)
    assert tail_page(7, 4, 3) == (1, 4, 1, 7)
    assert tail_page(7, 1, 3) == (0, 1, None, 4)
    assert tail_page(7, 99, 3) == (4, 7, 4, None)          # past the head: the newest page
    assert tail_page(7, 0, 3) == (0, 0, None, 3)
    covered, before = [], None
    while True:
        low, top, older, _ = tail_page(120, before, 50)
        covered += range(top, low, -1)
        if older is None:
            break
        before = older
    assert covered == list(range(120, 0, -1))
