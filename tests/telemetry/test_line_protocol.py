"""Line protocol from :func:`hub.telemetry_points.to_lines`: the cached per-series templates give
exactly the text :meth:`Point.to_line` gives (escaping, non-finite values, odd field values),
and the template cache stays bounded however many series pass through it."""

from __future__ import annotations

import math

import pytest

from hub.telemetry_points import LineTemplates, Point, to_lines

NAN, INF = float("nan"), float("inf")


def one_by_one(points: list[Point]) -> str:
    """The reference: each point's own line, joined."""
    return "\n".join(line for p in points if (line := p.to_line()))


def test_tags_and_names_with_spaces_commas_equals_newlines_and_percents_are_escaped() -> None:
    point = Point(
        "dev ice,x",
        (("a b", "c,d"), ("e=f", "g\nh"), ("p%", "q%s"), ("back", "s\\")),
        {"x y": 1, "z%r": 2.5, "n": NAN, "t": True},
        17,
    )
    expected = r"dev\ ice\,x,a\ b=c\,d,e\=f=g\\nh,p%=q%s,back=s\\ x\ y=1.0,z%r=2.5,t=1.0 17"
    assert point.to_line() == expected
    # first call builds the template, the second one uses it: both exact
    assert to_lines([point]) == expected
    assert to_lines([point, point]) == expected + "\n" + expected
    # the template itself is escaped (not only right through to_line's fallback)
    template = LineTemplates().get(point.measurement, point.tags, {"x y": 1.0, "z%r": 2.5})
    assert template % (1.0, 2.5, 17) == (
        r"dev\ ice\,x,a\ b=c\,d,e\=f=g\\nh,p%=q%s,back=s\\ x\ y=1.0,z%r=2.5 17"
    )


def test_non_finite_values_are_left_out_and_points_without_fields_skipped() -> None:
    tags = (("device", "d1"),)
    points = [
        Point("device", tags, {"a": 1.5, "b": 2.0}, 1),
        Point("device", tags, {"a": NAN, "b": 2.0}, 2),  # same series, one value dropped
        Point("device", tags, {"a": INF, "b": -INF}, 3),  # nothing left: no line
        Point("device", tags, {}, 4),  # no fields: no line
        Point("device", tags, {"a": 1e308, "b": 1e308}, 5),  # finite, though their sum is not
        Point("device", tags, {"a": 3, "b": 0}, 6),  # ints are written as floats
        Point("device", (), {"a": -0.1}, 7),  # no tags at all
    ]
    text = to_lines(points)
    assert text == one_by_one(points)
    assert text.splitlines() == [
        "device,device=d1 a=1.5,b=2.0 1",
        "device,device=d1 b=2.0 2",
        "device,device=d1 a=1e+308,b=1e+308 5",
        "device,device=d1 a=3.0,b=0.0 6",
        "device a=-0.1 7",
    ]
    assert to_lines([]) == ""


def test_field_order_is_kept_per_point_even_within_one_series() -> None:
    tags = (("device", "d1"),)
    points = [
        Point("device", tags, {"a": 1.0, "b": 2.0}, 1),
        Point("device", tags, {"b": 2.0, "a": 1.0}, 2),
        Point("device", tags, {"a": 1.0}, 3),
    ]
    assert to_lines(points).splitlines() == [
        "device,device=d1 a=1.0,b=2.0 1",
        "device,device=d1 b=2.0,a=1.0 2",
        "device,device=d1 a=1.0 3",
    ]


def test_the_template_cache_never_holds_more_than_its_bound() -> None:
    cache = LineTemplates(max_entries=3)
    for i in range(50):
        template = cache.get("device", (("device", f"d{i}"),), {"v": 1.0})
        assert template % (float(i), i) == f"device,device=d{i} v={float(i)!r} {i}"
        assert len(cache) <= 3
    # many more series than the shared cache keeps still come out exact
    points = [
        Point("device", (("device", f"d{i}"), ("venue", "hall 1")), {"v": i / 3}, i)
        for i in range(10_000)
    ]
    assert to_lines(points) == one_by_one(points)
    with pytest.raises(ValueError):
        LineTemplates(max_entries=0)


def test_values_that_round_trip_exactly() -> None:
    values = [0.1, 1 / 3, -2.5e-12, 123456789.125, 2.0**60, math.pi]
    points = [Point("m", (("k", "v"),), {"x": v}, i) for i, v in enumerate(values)]
    lines = to_lines(points).splitlines()
    assert [float(line.split("x=")[1].split(" ")[0]) for line in lines] == values
