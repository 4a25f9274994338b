"""Identifiers chosen by the orchestrator (vnic ids, security group ids).

They end up in file names (``qemu-vhost-<id>``), log lines and kernel object
comments, so a few characters are refused; the rest is the caller's choice.
"""

__all__ = ["MAX_ID_LENGTH", "check_id"]

MAX_ID_LENGTH = 128


def check_id(text: str) -> str | None:
    """None when ``text`` is a usable id, else what is wrong with it."""
    if not text:
        return "is empty"
    if len(text) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if "/" in text or text in (".", ".."):
        return "cannot be used as a file name"
    if any(not ch.isprintable() or ch.isspace() for ch in text):
        return "contains spaces or control characters"
    return None
