"""Text from files and users, made safe to print as one terminal line."""

from __future__ import annotations


def printable(text: object) -> str:
    """``str(text)`` with control and format characters (ESC, CR, newlines, bidi overrides, ...) written
    as escapes (``\\x1b``), so a file name or a model file's labels cannot drive the terminal or break
    a one-line message."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
