"""Numbers and data as page text. Every text that comes from the data goes through
:func:`esc`; a missing number shows as a dash."""

from __future__ import annotations

import html

DASH = "—"


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt_int(value) -> str:
    return DASH if value is None else f"{int(value):,}"


def fmt_score(value, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def fmt_delta(value, digits: int = 2) -> str:
    if value is None:
        return DASH
    if round(value, digits) == 0:
        return f"±{0:.{digits}f}"
    return f"{value:+.{digits}f}".replace("-", "−")


def fmt_number(value: float, digits: int = 2) -> str:
    """A short number: at most ``digits`` decimals, no trailing zeros (0.05, 0.5, 1)."""
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def percent(part, whole) -> str:
    if not whole or part is None:
        return DASH
    share = 100.0 * part / whole
    return f"{share:.1f}%" if share >= 0.1 or share == 0 else "<0.1%"


def clip(text, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
