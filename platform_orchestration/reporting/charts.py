"""Small inline SVG charts for the recoverability report: no script, no external asset, a
``<title>`` on every mark naming the backup or drill it stands for (hover shows it)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from platform_orchestration.observability.recoverability import DrillFigures, StoreCopy

CLOUD_COLOURS = {"aws": "#d97706", "azure": "#2563eb", "gcp": "#16a34a", "local": "#6b7280"}
FALLBACK_COLOURS = ("#9333ea", "#0891b2", "#be123c", "#4d7c0f")


def colour_of(cloud: str, index: int = 0) -> str:
    return CLOUD_COLOURS.get(cloud, FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)])


def human_seconds(seconds: float) -> str:
    """
    >>> human_seconds(42.4), human_seconds(754), human_seconds(7300), human_seconds(200000)
    ('42.4s', '12m 34s', '2h 1m', '2d 7h')
    """
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def copy_age_chart(copies: Sequence[StoreCopy], rpo_seconds: float, *, width: int = 560) -> str:
    """One bar per required store: the age of the newest backup it holds, against the RPO (the
    dashed line). Red past the RPO; a store holding no backup gets a labelled empty row."""
    row, left, right = 26, 150, 90
    height = row * len(copies) + 30
    scale_max = max([rpo_seconds * 1.25] + [c.age_seconds or 0 for c in copies])
    plot = width - left - right
    x_rpo = left + plot * rpo_seconds / scale_max
    parts = [f'<svg class="chart copy-age" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>Copy age per cloud against the RPO of {escape(human_seconds(rpo_seconds))}</title>"]
    for i, c in enumerate(copies):
        y = 8 + i * row
        label = f"{c.store} ({c.cloud})"
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="12">{escape(label)}</text>')
        if c.age_seconds is None or c.newest is None:
            why = c.unreachable and "store unreachable" or "no backup"
            parts.append(f'<text x="{left + 4}" y="{y + 14}" font-size="12" fill="#b91c1c">{escape(why)}</text>')
            continue
        w = max(2.0, plot * c.age_seconds / scale_max)
        over = c.age_seconds > rpo_seconds
        fill = "#dc2626" if over else colour_of(c.cloud, i)
        parts.append(
            f'<rect class="bar" data-store="{escape(c.store)}" data-backup-id="{escape(c.newest.backup_id)}" '
            f'x="{left}" y="{y}" width="{w:.1f}" height="{row - 8}" fill="{fill}">'
            f"<title>{escape(c.store)}: backup {escape(c.newest.backup_id)}, {escape(human_seconds(c.age_seconds))} "
            f"old{' (over the RPO)' if over else ''}</title></rect>")
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}" font-size="12">'
                     f"{escape(human_seconds(c.age_seconds))}</text>")
    bottom = height - 18
    parts.append(f'<line x1="{x_rpo:.1f}" y1="4" x2="{x_rpo:.1f}" y2="{bottom}" stroke="#111" '
                 'stroke-dasharray="4 3"><title>RPO</title></line>')
    parts.append(f'<text x="{x_rpo:.1f}" y="{height - 4}" text-anchor="middle" font-size="11">'
                 f"RPO {escape(human_seconds(rpo_seconds))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def drill_rto_chart(drills: Sequence[DrillFigures], rto_target_seconds: float, *, width: int = 560,
                    height: int = 200) -> str:
    """Measured RTO of every drill over time, one line per cloud, against the target (dashed).
    A failed drill is a red cross (at its RTO, or at the top when it never restored)."""
    left, right, top, bottom = 60, 110, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg class="chart drill-rto" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             "<title>Drill RTO over time per cloud against the RTO target</title>"]
    if not drills:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="13">'
                     "no drill recorded yet</text></svg>")
        return "".join(parts)
    times = [d.finished_at.timestamp() for d in drills]
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1.0)
    y_max = max([rto_target_seconds * 1.2] + [d.rto_seconds or 0 for d in drills])

    def x_of(moment: datetime) -> float:
        return left + (plot_w * (moment.timestamp() - t0) / span if len(drills) > 1 else plot_w / 2)

    def y_of(seconds: float) -> float:
        return top + plot_h * (1 - seconds / y_max)

    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 10}" text-anchor="end" font-size="11">'
                 f"{escape(human_seconds(y_max))}</text>")
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>')
    first = drills[0].finished_at.strftime("%Y-%m-%d %H:%M")
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11">{escape(first)}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" font-size="11">'
                 f'{escape(drills[-1].finished_at.strftime("%Y-%m-%d %H:%M"))}</text>')
    y_target = y_of(rto_target_seconds)
    parts.append(f'<line x1="{left}" y1="{y_target:.1f}" x2="{left + plot_w}" y2="{y_target:.1f}" stroke="#111" '
                 'stroke-dasharray="4 3"><title>RTO target</title></line>')
    parts.append(f'<text x="{left + 4}" y="{y_target - 4:.1f}" font-size="11">'
                 f"RTO target {escape(human_seconds(rto_target_seconds))}</text>")
    clouds = list(dict.fromkeys(d.cloud for d in drills))
    for index, cloud in enumerate(clouds):
        colour = colour_of(cloud, index)
        mine = [d for d in drills if d.cloud == cloud]
        points = [(x_of(d.finished_at), y_of(d.rto_seconds)) for d in mine if d.rto_seconds is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for d in mine:
            rto = d.rto_seconds
            x, y = x_of(d.finished_at), y_of(rto if rto is not None else y_max)
            tip = (f"drill {d.drill_id} from {d.store} ({d.cloud}) of backup {d.backup_id or '-'}: "
                   + (f"RTO {human_seconds(rto)}, " if rto is not None else "")
                   + ("passed" if d.passed else f"FAILED: {d.failure or ''}"))
            attrs = f'class="point" data-drill-id="{escape(d.drill_id)}" data-cloud="{escape(cloud)}"'
            if d.passed:
                parts.append(f'<circle {attrs} cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">'
                             f"<title>{escape(tip)}</title></circle>")
            else:
                parts.append(f'<path {attrs} d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},'
                             f'{y + 4:.1f}L{x + 4:.1f},{y - 4:.1f}" stroke="#dc2626" stroke-width="2.5">'
                             f"<title>{escape(tip)}</title></path>")
        legend_y = top + 28 + 16 * index
        parts.append(f'<circle cx="{left + plot_w + 10}" cy="{legend_y - 4}" r="4" fill="{colour}"/>'
                     f'<text x="{left + plot_w + 18}" y="{legend_y}" font-size="11">{escape(cloud)}</text>')
    parts.append("</svg>")
    return "".join(parts)
