"""The console's small charts: an endpoint's samples over all its instances as SVG polyline points (numbers only)."""

from __future__ import annotations

from typing import Any

WIDTH, HEIGHT = 240, 48


def merged(series: list[list[list[float | None]]]) -> list[list[float | None]]:
    """The instances' series summed sample by sample from the newest back (they sample at the same pace): requests/s
    and errors/s added, p50 averaged and p99 the largest over the instances that had latencies."""
    longest = max((len(s) for s in series), default=0)
    out = []
    for back in range(longest, 0, -1):
        rows = [s[-back] for s in series if len(s) >= back]
        p50s = [r[3] for r in rows if r[3] is not None]
        p99s = [r[4] for r in rows if r[4] is not None]
        out.append(
            [
                max(r[0] or 0 for r in rows),
                round(sum(r[1] or 0 for r in rows), 2),
                round(sum(r[2] or 0 for r in rows), 2),
                round(sum(p50s) / len(p50s), 2) if p50s else None,
                max(p99s) if p99s else None,
            ]
        )
    return out


def chart(series: list[list[list[float | None]]]) -> dict[str, Any] | None:
    """Polyline points for requests/s, errors/s and p99 (each scaled to its own peak), and the figures the legend
    shows; None with fewer than two samples."""
    samples = merged([s for s in series if s])
    if len(samples) < 2:
        return None
    last = samples[-1]
    return {
        "requests": _points([s[1] for s in samples]),
        "errors": _points([s[2] for s in samples]),
        "p99": _points([s[4] for s in samples]),
        "peak": max(s[1] or 0 for s in samples),
        "now": last[1],
        "errors_now": last[2],
        "p50": last[3],
        "p99_now": last[4],
        "minutes": round(((samples[-1][0] or 0) - (samples[0][0] or 0)) / 60, 1),
    }


def _points(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    peak = max(known, default=0) or 1.0
    step = WIDTH / (len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{HEIGHT - 2 - (HEIGHT - 4) * v / peak:.1f}" for i, v in enumerate(values) if v is not None
    )
