"""How both sides write times: RFC 3339 in UTC, to the second.

For example `2026-12-04T20:06:20Z`, as the Kubernetes API writes conditions and as every file of a
run directory does.
"""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc  # dt.UTC needs Python 3.11
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(when: dt.datetime) -> str:
    """`when` as RFC 3339 (UTC)."""
    return when.astimezone(UTC).strftime(TIME_FORMAT) if when.tzinfo else when.strftime(TIME_FORMAT)


def now() -> str:
    """The current time as RFC 3339 (UTC)."""
    return timestamp(dt.datetime.now(UTC))


def parse_time(value: str | None) -> dt.datetime | None:
    """A time written by `timestamp`; None for anything else (a damaged field is reset, not fatal)."""
    if not value:
        return None
    try:
        return dt.datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
