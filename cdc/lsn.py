"""Log sequence numbers: PostgreSQL prints them as ``16/B374D848``; we carry them as integers."""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` → integer LSN.

    Raises:
        ValueError: The text is not an LSN.
    """
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not an LSN (expected two hex numbers like 16/B374D848)")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """Integer LSN → ``"16/B374D848"``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
