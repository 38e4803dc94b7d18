"""How the CLI writes counts, sizes and durations: one definition of each, used by every command."""

from __future__ import annotations


def count(n: float) -> str:
    """1234 -> '1.23k', 12_100_000 -> '12.10M', 3e9 -> '3.00B'; below 1000 the number itself."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def size(n: int | None) -> str:
    """Bytes in binary units: 512 -> '512 B', 1536 -> '1.5 KB', 3 * 2**30 -> '3.0 GB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


def megabytes(n: float) -> str:
    """Bytes as decimal megabytes with two decimals: 4_200_000 -> '4.20'."""
    return f"{n / 1e6:,.2f}"


def clock(seconds: float) -> str:
    """A running time as H:MM:SS (progress, ETA)."""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def duration(seconds: float) -> str:
    """A time trained, in words: '4m 05s', '2h 03m 10s'."""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"
