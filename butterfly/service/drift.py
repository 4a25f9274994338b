"""What the daemon reports about drift: changes other software made to
butterfly's kernel objects, and the repairs that put them back.

Pure data, shared by the daemon (which counts) and the API (which answers
``app_status`` with it when asked).
"""

from dataclasses import dataclass

__all__ = ["DriftReport"]


@dataclass(frozen=True, slots=True)
class DriftReport:
    changes_seen: int = 0
    """Foreign changes noticed since the daemon started."""
    changes_repaired: int = 0
    """Of those, the ones a successful repair put back."""
    repairs: int = 0
    repair_failures: int = 0
    report_only: bool = False
    seen_by_kind: tuple[tuple[str, int], ...] = ()
    """Changes seen, by what they were made to (see
    :data:`butterfly.dataplane.watch.KINDS`): every kind, zero or not."""
    repaired_by_kind: tuple[tuple[str, int], ...] = ()
    last_changes: tuple[str, ...] = ()
    """The latest batch of changes, one line each (at most a few dozen)."""
    last_change_date: float | None = None
