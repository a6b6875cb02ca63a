"""Per-update metrics that panels read incrementally with a cursor.

The worker appends; a reader passes the cursor it got last time and receives only what is
new, so a panel refreshing at a few hertz never re-reads the whole history.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from workbench.store import UpdateRecord

__all__ = ["MetricsLog", "UpdateRecord"]


class MetricsLog:
    """Append-only list of ``UpdateRecord`` with cursor reads; keeps the newest ``cap``.

    >>> log = MetricsLog()
    >>> log.extend([UpdateRecord(1, 2.0, 1e-3, 0.0, 5.0, 8, None)])
    >>> records, cursor = log.since(0)
    >>> [r.loss for r in records], cursor
    ([2.0], 1)
    >>> log.since(cursor)
    ([], 1)
    """

    def __init__(self, cap: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._records: list[UpdateRecord] = []
        self._offset = 0  # records dropped from the front
        self._cap = cap

    def extend(self, records: Sequence[UpdateRecord]) -> None:
        with self._lock:
            self._records.extend(records)
            extra = len(self._records) - self._cap
            if extra > 0:
                del self._records[:extra]
                self._offset += extra

    def since(self, cursor: int = 0) -> tuple[list[UpdateRecord], int]:
        """Records appended after ``cursor``, and the cursor to pass next time."""
        with self._lock:
            start = max(0, cursor - self._offset)
            new = self._records[start:]
            return new, self._offset + len(self._records)
