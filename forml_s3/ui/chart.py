"""The geometry of a release's chart: one point per live generation, by commit time and tuning score.

Rendered on the server as SVG (no script, no CDN). The commit time comes from the listing, so every generation
gets its point; the tuning score comes from the generation's marker, read only for the page of the table shown
(and any read earlier): a generation without a known score (marker not read yet, or trained without tuning) is
drawn hollow on the bottom lane.
"""

import dataclasses
import typing

from . import model

WIDTH, HEIGHT = 720, 260
"""The SVG's size in pixels."""
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 52
"""Margins around the plot (the axis labels live in the left and bottom ones)."""
LANE = 18
"""Height of the bottom lane holding generations without a known score."""
PAD = 12
"""Horizontal room between the axis and the first and last points."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One generation on the chart: its number, where it is drawn, and its score (``None``: not known)."""

    number: int
    x: float
    y: float
    score: float | None
    read: bool
    """Whether the generation's marker was read (else its score is unknown, not absent)."""
    committed: str
    href: str


@dataclasses.dataclass(frozen=True)
class Chart:
    width: int
    height: int
    points: list[Point]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    plot: tuple[float, float, float, float]
    """left, top, right, bottom of the scored area."""
    lane: float | None
    """y of the lane of unscored generations (``None``: every score known)."""


def build(rows: list[model.Row], href: typing.Callable[[int], str]) -> Chart:
    """The chart of the given generations (any order)."""
    rows = sorted(rows, key=lambda r: r.number)
    left, right, top = LEFT, WIDTH - RIGHT, TOP
    unscored = [r for r in rows if r.score is None]
    scored = len(unscored) < len(rows)
    bottom = HEIGHT - BOTTOM - (LANE if unscored and scored else 0)
    lane = None
    if unscored:  # below the scored area; or, with no score at all, across the middle
        lane = HEIGHT - BOTTOM - LANE / 2 if scored else (top + bottom) / 2
    inner = (left + PAD, right - PAD)  # points at the ends stay clear of the axis

    times = [r.committed for r in rows]
    if all(t is not None for t in times) and len(set(times)) > 1:
        low, high = min(times), max(times)

        def x_of(i: int, row: model.Row) -> float:
            return inner[0] + (inner[1] - inner[0]) * (row.committed - low) / (high - low)

        x_ticks = [(inner[0], model.when(low)), (inner[1], model.when(high))]
    else:  # one generation, or no times from the store: space them evenly in number order
        span = max(len(rows) - 1, 1)

        def x_of(i: int, row: model.Row) -> float:
            return inner[0] + (inner[1] - inner[0]) * (i / span if len(rows) > 1 else 0.5)

        ends = sorted({0, len(rows) - 1}) if rows else []
        x_ticks = [(x_of(i, rows[i]), f'#{rows[i].number}  {model.when(rows[i].committed)}') for i in ends]

    scores = [r.score for r in rows if r.score is not None]
    if scores:
        smin, smax = min(scores), max(scores)
        if smin == smax:
            smin, smax = smin - 0.5, smax + 0.5
        y_ticks = [(bottom - (bottom - top) * k / 4, f'{smin + (smax - smin) * k / 4:.4g}') for k in range(5)]
    else:
        smin, smax, y_ticks = 0.0, 1.0, []

    points = []
    for i, row in enumerate(rows):
        y = lane if row.score is None else bottom - (bottom - top) * (row.score - smin) / (smax - smin)
        points.append(
            Point(
                row.number,
                round(x_of(i, row), 1),
                round(y, 1),
                row.score,
                row.marker is not None,
                model.when(row.committed),
                href(row.number),
            )
        )
    return Chart(WIDTH, HEIGHT, points, y_ticks, x_ticks, (left, top, right, bottom), lane)
