"""Charts as inline SVG made on the server: they need no script, no library and no network, and
print. Colours are CSS classes (c0..c7, see static/ui.css); each bar has a <title>, which browsers
show as a tooltip."""

from __future__ import annotations

from markupsafe import Markup, escape

SERIES_CLASSES = 8


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def stacked_columns(
    columns: list[tuple[str, dict[str, int]]],
    series: list[str],
    *,
    label_every: int = 3,
    height: int = 180,
    title: str = "",
) -> Markup:
    """One column per bucket (e.g. an hour), stacked by series (e.g. message type)."""
    width = 720
    left, bottom, top = 44, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max((sum(v.values()) for _, v in columns), default=0)
    top_value = _nice_max(peak)
    n = max(len(columns), 1)
    slot = plot_w / n
    bar = max(slot * 0.8, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for i in range(5):
        value = top_value * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 8}" y1="{_num(y)}" y2="{_num(y)}"/>')
        parts.append(
            f'<text class="axis" x="{left - 4}" y="{_num(y + 4)}" text-anchor="end">{_num(value)}</text>'
        )
    index = {name: i % SERIES_CLASSES for i, name in enumerate(series)}
    for i, (label, values) in enumerate(columns):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        for name in series:
            count = values.get(name, 0)
            if not count:
                continue
            h = plot_h * count / top_value
            y -= h
            parts.append(
                f'<rect class="c{index[name]}" x="{_num(x)}" y="{_num(y)}" width="{_num(bar)}" height="{_num(h)}">'
                f"<title>{escape(label)}: {escape(name)} {count}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text class="axis" x="{_num(x + bar / 2)}" y="{height - 6}" text-anchor="middle">{escape(label)}</text>'
            )
    if not columns or peak == 0:
        parts.append(
            f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">no messages</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_rows(
    rows: list[tuple[str, str, list[tuple[str, int]]]],
    series: list[str],
    *,
    title: str = "",
) -> Markup:
    """Horizontal bars, one per (label, link, [(series, value)]), e.g. problems per partner."""
    width, row_h, left = 720, 22, 300
    height = max(len(rows), 1) * row_h + 8
    peak = max((sum(v for _, v in parts) for _, _, parts in rows), default=0)
    top_value = _nice_max(peak)
    index = {name: i % SERIES_CLASSES for i, name in enumerate(series)}
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, link, values) in enumerate(rows):
        y = 4 + i * row_h
        text = escape(label if len(label) <= 42 else label[:41] + "…")
        out.append(
            f'<a href="{escape(link)}"><text class="label" x="{left - 6}" y="{y + 15}" text-anchor="end">{text}</text></a>'
        )
        x = float(left)
        for name, value in values:
            if not value:
                continue
            w = (width - left - 40) * value / top_value
            out.append(
                f'<rect class="c{index.get(name, 0)}" x="{_num(x)}" y="{y + 3}" width="{_num(w)}" height="{row_h - 6}">'
                f"<title>{escape(label)}: {escape(name)} {value}</title></rect>"
            )
            x += w
        total = sum(v for _, v in values)
        out.append(f'<text class="axis" x="{_num(x + 4)}" y="{y + 15}">{total}</text>')
    if not rows:
        out.append(
            f'<text class="empty" x="{width / 2}" y="18" text-anchor="middle">no refusals or failures</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def legend(series: list[str], labels: dict[str, str] | None = None) -> Markup:
    items = "".join(
        f'<li><svg class="swatch" viewBox="0 0 10 10"><rect class="c{i % SERIES_CLASSES}" width="10" height="10"/></svg>'
        f"{escape((labels or {}).get(name, name))}</li>"
        for i, name in enumerate(series)
    )
    return Markup(f'<ul class="legend">{items}</ul>')
