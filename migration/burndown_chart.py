"""The burn-down as a server-rendered SVG: geometry here, markup in templates/admin/campaign/_burndown.svg.

Why SVG from the server and not a charting library: the chart is a few lines
and labels; a library would add JavaScript to vendor into static/ and keep
updated, a Content-Security-Policy exception, and a page that shows nothing
until scripts ran. The SVG is in the HTML itself, prints, works without
JavaScript, and tests read it like any other markup. It does not rely on
colour: the actual line is solid with point markers, the projection dashed,
the dates are vertical lines with text labels, and the same numbers are in a
table below the chart.
"""

from dataclasses import dataclass
from datetime import date

from migration.campaign import BurnDown

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 20, 28, 44


@dataclass(frozen=True)
class Marker:
    x: float
    label: str
    dash: str  # SVG stroke-dasharray: each date line has its own pattern
    anchor: str = "middle"  # text-anchor of the label, so a label at either edge stays inside the chart


def _nice_max(value: int) -> int:
    """The y axis' top: 1, 2 or 5 times a power of ten, at least value (and at least 5)."""
    value = max(value, 5)
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return factor * step
        step *= 10


def geometry(bd: BurnDown, *, labels: dict) -> dict:
    """Everything the SVG template draws, in pixels. labels: {"migrate_by": str, "shutdown": str, "today": str}."""
    first, last = bd.start, max(bd.shutdown, bd.today)
    days = max((last - first).days, 1)
    top_value = _nice_max(max([v for _, v in bd.actual + bd.projection] or [0]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(day: date) -> float:
        return round(LEFT + plot_w * (day - first).days / days, 1)

    def y(value: float) -> float:
        return round(TOP + plot_h * (1 - value / top_value), 1)

    # top_value is 1, 2 or 5 x 10^n (at least 5), so fifths are whole numbers.
    y_ticks = [(y(top_value * i / 5), top_value * i // 5) for i in range(6)]
    step = max(1, days // 8)
    x_ticks = [(x(first.fromordinal(first.toordinal() + d)), first.fromordinal(first.toordinal() + d))
               for d in range(0, days + 1, step)]
    def marker(day: date, label: str, dash: str) -> Marker:
        at = x(day)
        anchor = "end" if at > WIDTH - RIGHT - 80 else "start" if at < LEFT + 80 else "middle"
        return Marker(at, label, dash, anchor)

    markers = [marker(bd.migrate_by, labels["migrate_by"], "6 3"), marker(bd.shutdown, labels["shutdown"], "2 2")]
    if first <= bd.today <= last:
        markers.append(marker(bd.today, labels["today"], "1 4"))
    return {
        "width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP, "bottom": HEIGHT - BOTTOM,
        "actual": " ".join(f"{x(d)},{y(v)}" for d, v in bd.actual),
        "points": [(x(d), y(v)) for d, v in bd.actual],
        "projection": " ".join(f"{x(d)},{y(v)}" for d, v in bd.projection),
        "y_ticks": y_ticks, "x_ticks": x_ticks, "markers": markers,
    }
