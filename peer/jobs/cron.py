"""When a job's ticks fall: cron expressions, nicknames and ``@every``, per time zone.

A schedule names a set of *ticks*, instants given as integer milliseconds since
the Unix epoch (UTC). Every node computes the same ticks from the same
schedule, whatever its clock or start time: the ticks are a fixed set, and
``next_after`` / ``previous_at_or_before`` only look it up. A run is named by
its tick, so this is what lets nodes agree on which run is which.

Accepted texts (``parse_schedule``):

``*/5 * * * *``
    Five-field cron: minute, hour, day of month, month, day of week. Lists,
    ranges, steps, month and day names, ``L``, ``W`` and ``#`` work as in
    croniter; when both day fields are restricted a date matching either one
    fires (classic cron).
``*/10 * * * * *``
    Six-field cron with the **seconds field first**, then the five above.
``@yearly @annually @monthly @weekly @daily @midnight @hourly``
    The usual nicknames (``0 0 1 1 *``, ``0 0 1 * *``, ``0 0 * * 0``,
    ``0 0 * * *``, ``0 * * * *``).
``@every 30s``, ``@every 1h30m``
    A fixed interval of at least 100 ms (a whole number of milliseconds, at
    most 10 years). Its ticks are the multiples of the interval since
    1970-01-01T00:00Z, so ``@every 1h`` fires on the hour, UTC, and the time
    zone has no effect.

Hashed and random cron values (croniter's ``H`` and ``R``) are refused: they
would differ from node to node.

Cron schedules are evaluated on the wall clock of their time zone (an IANA
name such as ``Europe/Paris``, default ``UTC``). Where the wall clock jumps,
a schedule is either *periodic* -- its hour field covers all 24 hours
(``*/5 * * * *``, ``30 * * * *``) -- or *time-of-day* (any other hour field:
``30 2 * * *``, ``0 */2 * * *``), and:

* spring forward (a wall-clock time that does not exist, e.g. 02:30 in
  Europe/Paris on 2026-03-29): a periodic schedule skips it; a time-of-day
  schedule fires once at the instant the clock jumps (03:00 local), however
  many of its times fell in the gap -- so a daily job still runs that day;
* fall back (a wall-clock time that happens twice, e.g. 02:30 in Europe/Paris
  on 2026-10-25): a periodic schedule fires at both occurrences (it keeps its
  rhythm in real time); a time-of-day schedule fires only at the first one --
  so a daily job runs once.

This is Vixie cron's approach, except that Vixie calls a job periodic when
its minute *or* hour field starts with ``*``; here only the hours count, so
``*/15 2 * * *`` is time-of-day. croniter's own handling
of aware datetimes agrees except that it fires a time-of-day job twice on the
fall-back day (and, in zones such as Australia/Lord_Howe or Pacific/Chatham,
gives answers that depend on the start time), so croniter is only asked about
naive wall-clock times here, and the zone's offsets are applied by this module.
The set of ticks does not depend on where a lookup starts; ticks are strictly
increasing and never repeated. Offsets come from the tz database (the
``tzdata`` package where the system has none): nodes with different versions
could disagree about a zone whose rules changed. A zone's transitions are
found by sampling its offset every 6 hours and bisecting (no two transitions
in the database since 1900 are closer than that), cached per zone and year.
Cron ticks are computed for the years 10 to 9989.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import math
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterBadDateError, croniter

__all__ = [
    "MAX_EVERY_MS",
    "MIN_EVERY_MS",
    "NICKNAMES",
    "Schedule",
    "check_timezone",
    "parse_duration",
    "parse_schedule",
]

NICKNAMES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MIN_EVERY_MS = 100
MAX_EVERY_MS = 3650 * 86_400_000

# --------------------------------------------------------------------------- durations

_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_ORDER = ("d", "h", "m", "s", "ms")
_NUMBER_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_PART_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|d|h|m|s)", re.ASCII)
_DURATION_HINT = "use seconds or a duration like '500ms', '30s', '5m', '2h', '1d', '1h30m'"


def parse_duration(value: Any) -> float:
    """Seconds, from a number >= 0 or a string such as ``"500ms"``, ``"30s"``,
    ``"5m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` or ``"1.5s"`` (units ``d h m s ms``,
    each at most once, largest first; a bare number string is seconds).
    Raises ``ValueError`` saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration ({_DURATION_HINT}), got {type(value).__name__} {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"expected a duration >= 0, got {value!r}")
        return seconds
    text = value.strip()
    if _NUMBER_RE.fullmatch(text):
        return float(text)
    if not text:
        raise ValueError(f"expected a duration ({_DURATION_HINT}), got an empty string")
    total = 0.0
    position = 0
    last = -1
    while position < len(text):
        match = _PART_RE.match(text, position)
        if match is None:
            raise ValueError(f"{value!r} is not a duration ({_DURATION_HINT})")
        number, unit = match.groups()
        rank = _UNIT_ORDER.index(unit)
        if rank <= last:
            raise ValueError(f"{value!r} is not a duration: units go largest first, each once (d h m s ms)")
        last = rank
        total += float(number) * _UNITS[unit]
        position = match.end()
    if not math.isfinite(total):
        raise ValueError(f"{value!r} is too long a duration")
    return total


# --------------------------------------------------------------------------- time zones

_ZONE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*", re.ASCII)
_NOT_ZONES = {"localtime", "posixrules", "Factory"}


def check_timezone(name: Any) -> ZoneInfo:
    """The zone of an IANA name (``"Europe/Paris"``, ``"UTC"``); ``ValueError``
    naming it if unknown. Names are case-sensitive; ``localtime`` is refused
    (it would differ from node to node)."""
    if not isinstance(name, str):
        raise ValueError(f"expected a time zone name such as 'Europe/Paris', got {name!r}")
    if not _ZONE_RE.fullmatch(name) or name in _NOT_ZONES or len(name) > 64:
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Paris' or 'UTC')")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Paris' or 'UTC')") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PROBE_STEP = 6 * 3600  # offsets are sampled this often to find transitions


def _offset(zone: ZoneInfo, instant: int) -> int:
    """The zone's UTC offset at ``instant`` (epoch seconds), in seconds."""
    delta = (_EPOCH + timedelta(seconds=instant)).astimezone(zone).utcoffset()
    assert delta is not None
    return int(delta.total_seconds())


def _year_start(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0))


def _year_of(instant: int) -> int:
    return (_EPOCH + timedelta(seconds=instant)).year


@functools.lru_cache(maxsize=4096)
def _year_transitions(key: str, year: int) -> tuple[tuple[int, int, int], ...]:
    """(instant, offset before, offset after) of each offset change of zone
    ``key`` in UTC year ``year``; ``instant`` is the first second with the new
    offset. Found by sampling every 6 hours, then bisecting."""
    zone = ZoneInfo(key)
    end = _year_start(year + 1) - 1
    found: list[tuple[int, int, int]] = []
    probe = _year_start(year) - 1
    offset = _offset(zone, probe)
    while probe < end:
        following = min(probe + _PROBE_STEP, end)
        new = _offset(zone, following)
        if new == offset:
            probe = following
            continue
        low, high = probe, following
        while high - low > 1:
            middle = (low + high) // 2
            if _offset(zone, middle) == offset:
                low = middle
            else:
                high = middle
        after = _offset(zone, high)
        found.append((high, offset, after))
        probe, offset = high, after
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _window(key: str, year: int) -> tuple[tuple[int, ...], tuple[tuple[int, int, int], ...]]:
    entries = _year_transitions(key, year - 1) + _year_transitions(key, year) + _year_transitions(key, year + 1)
    return tuple(entry[0] for entry in entries), entries


def _segment(key: str, zone: ZoneInfo, instant: int) -> tuple[int, int, int, int]:
    """(start, end, offset, offset before start) of the stretch of constant
    offset holding ``instant``: ``start <= instant < end``. Ends with no
    transition are placed a year or so away, with an unchanged offset."""
    year = _year_of(instant)
    times, entries = _window(key, year)
    index = bisect.bisect_right(times, instant)
    if index:
        start, previous, offset = entries[index - 1]
    else:
        start = _year_start(year - 1)
        offset = entries[0][1] if entries else _offset(zone, instant)
        previous = offset
    end = entries[index][0] if index < len(entries) else _year_start(year + 2)
    return start, end, offset, previous


# --------------------------------------------------------------------------- engines

_CRON_MIN_S = _year_start(10)
_CRON_MAX_S = _year_start(9990)


_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT"})


class _NoTick(Exception):
    pass


class _Every:
    """``@every``: the multiples of ``interval`` ms since the epoch."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def next_after(self, ms: int) -> int:
        return (ms // self.interval + 1) * self.interval

    def previous_at_or_before(self, ms: int) -> int | None:
        return ms // self.interval * self.interval

    def ticks_between(self, after_ms: int, until_ms: int, limit: int) -> list[int]:
        first = self.next_after(after_ms)
        if limit <= 0 or first > until_ms:
            return []
        count = min(limit, (until_ms - first) // self.interval + 1)
        return [first + index * self.interval for index in range(count)]


class _Cron:
    """A cron expression on a zone's wall clock. Wall times are handled as
    "wall seconds" (seconds since 1970-01-01T00:00 on the wall clock); croniter
    only ever sees those, as naive times, so it never deals with time zones."""

    def __init__(self, expression: str, seconds_first: bool, zone_key: str) -> None:
        self.cron = croniter(expression, 0.0, second_at_beginning=seconds_first)
        self.lock = threading.Lock()
        self.zone_key = zone_key
        self.zone = ZoneInfo(zone_key)
        self.utc = zone_key in _UTC_NAMES
        hours = self.cron.expanded[1]
        self.periodic = hours == ["*"] or set(hours) == set(range(24))

    def wall_next(self, wall: int) -> int:
        """The first wall time matching the expression strictly after ``wall``."""
        try:
            with self.lock:
                return int(self.cron.get_next(float, start_time=float(wall)))
        except (CroniterBadDateError, ValueError, OverflowError):
            raise _NoTick from None

    def wall_previous(self, wall: int) -> int | None:
        """The last wall time matching the expression strictly before ``wall``."""
        try:
            with self.lock:
                return int(self.cron.get_prev(float, start_time=float(wall)))
        except (CroniterBadDateError, ValueError, OverflowError):
            return None

    def segment(self, instant: int) -> tuple[int, int, int, int]:
        if self.utc:
            return _CRON_MIN_S, _CRON_MAX_S, 0, 0
        return _segment(self.zone_key, self.zone, instant)

    def _gap_tick(self, start: int, offset: int, previous: int) -> bool:
        """Whether a time-of-day schedule fires at ``start``, the instant the
        clock jumps forward from ``start + previous`` to ``start + offset``."""
        return (
            not self.periodic
            and offset > previous
            and self.wall_next(start + previous - 1) < start + offset
        )

    def next_after_s(self, after: int) -> int:
        while True:
            if after >= _CRON_MAX_S:
                raise _NoTick
            start, end, offset, previous = self.segment(after + 1)
            if start == after + 1 and self._gap_tick(start, offset, previous):
                return start
            lower = after + offset
            if not self.periodic and previous > offset:
                # wall times repeated after a fall back fired in the previous stretch
                lower = max(lower, start + previous - 1)
            wall = self.wall_next(lower)
            if wall < end + offset:
                if wall - offset >= _CRON_MAX_S:
                    raise _NoTick
                return wall - offset
            if end >= _CRON_MAX_S:
                raise _NoTick
            after = end - 1

    def previous_at_or_before_s(self, until: int) -> int | None:
        while until >= _CRON_MIN_S:
            start, _end, offset, previous = self.segment(until)
            lowest = start + offset
            if not self.periodic and previous > offset:
                lowest = start + previous
            wall = self.wall_previous(until + offset + 1)
            if wall is None:
                return None
            if wall >= lowest:
                return wall - offset if wall - offset >= _CRON_MIN_S else None
            try:
                if self._gap_tick(start, offset, previous):
                    return start
            except _NoTick:
                return None
            until = start - 1
        return None

    def next_after(self, ms: int) -> int:
        try:
            return self.next_after_s(ms // 1000) * 1000
        except _NoTick:
            raise ValueError("no tick in the supported range (before the year 9990)") from None

    def previous_at_or_before(self, ms: int) -> int | None:
        tick = self.previous_at_or_before_s(ms // 1000)
        return None if tick is None else tick * 1000

    def ticks_between(self, after_ms: int, until_ms: int, limit: int) -> list[int]:
        ticks: list[int] = []
        after = after_ms // 1000
        try:
            while len(ticks) < limit:
                after = self.next_after_s(after)
                if after * 1000 > until_ms:
                    break
                ticks.append(after * 1000)
        except _NoTick:
            pass
        return ticks


_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_FIELD_RANGES = ("0-59", "0-23", "1-31", "1-12 or jan-dec", "0-7 or sun-sat")
_HASHED_RE = re.compile(r"[hr](?:\(|/|$)", re.ASCII | re.IGNORECASE)


def _cron_error(text: str, fields: list[str]) -> str:
    """Why croniter refuses ``fields``, naming the first bad field."""
    names = (("second",) if len(fields) == 6 else ()) + _FIELD_NAMES
    ranges = (("0-59",) if len(fields) == 6 else ()) + _FIELD_RANGES
    for index, value in enumerate(fields):
        probe = ["*"] * len(fields)
        probe[index] = value
        try:
            croniter(" ".join(probe), 0.0, second_at_beginning=len(fields) == 6)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            message = str(error)
            if "out of range" in message:
                why = f"out of range {ranges[index]}"
            elif "step" in message:
                why = "has a bad step"
            else:
                why = f"not understood (expected {ranges[index]}, '*', lists, ranges or steps like '1-5/2')"
            return f"{text!r} is not a valid cron expression ({names[index]} {value!r} {why})"
    return f"{text!r} is not a valid cron expression"


def _every(text: str, argument: str) -> _Every:
    if not argument:
        raise ValueError(f"{text!r}: @every needs an interval, e.g. '@every 30s'")
    try:
        seconds = parse_duration(argument)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    if seconds * 1000 < MIN_EVERY_MS:
        raise ValueError(f"{text!r}: the interval must be at least 100ms")
    if seconds * 1000 > MAX_EVERY_MS:
        raise ValueError(f"{text!r}: the interval must be at most 3650d")
    interval = round(seconds * 1000)
    if abs(interval - seconds * 1000) > 1e-6 * seconds * 1000:
        raise ValueError(f"{text!r}: the interval must be a whole number of milliseconds")
    return _Every(interval)


@functools.lru_cache(maxsize=1024)
def _engine(text: str, timezone: str) -> _Every | _Cron:
    """The parsed form of a schedule (cached: parsing costs ~0.1 ms)."""
    check_timezone(timezone)
    if not text:
        raise ValueError("empty schedule (expected a cron expression, a nickname like '@daily' or '@every 30s')")
    if text.startswith("@"):
        word, _, argument = text.partition(" ")
        word = word.lower()
        if word == "@every":
            return _every(text, argument.strip())
        if word not in NICKNAMES or argument:
            raise ValueError(
                f"{text!r} is not a schedule nickname (known: {', '.join(NICKNAMES)}, or '@every <interval>')"
            )
        expression, seconds_first = NICKNAMES[word], False
    else:
        fields = text.split(" ")
        if len(fields) not in (5, 6):
            raise ValueError(
                f"{text!r} is not a valid cron expression: expected 5 fields (minute hour day month weekday)"
                f" or 6 (second minute hour day month weekday), got {len(fields)}"
            )
        for field in fields:
            if any(_HASHED_RE.match(part) for part in field.split(",")):
                raise ValueError(
                    f"{text!r}: hashed and random cron values (H, R) are not supported "
                    "(every node must compute the same ticks)"
                )
        seconds_first = len(fields) == 6
        try:
            croniter(text, 0.0, second_at_beginning=seconds_first)
        except (ValueError, TypeError, KeyError, IndexError):
            raise ValueError(_cron_error(text, fields)) from None
        expression = text
    cron = _Cron(expression, seconds_first, timezone)
    try:
        cron.wall_next(_year_start(2000))
    except _NoTick:
        raise ValueError(f"{text!r} never fires (no date matches it)") from None
    return cron


def _normalise(text: Any) -> str:
    if not isinstance(text, str):
        raise ValueError(f"expected a schedule string such as '*/5 * * * *', got {text!r}")
    return " ".join(text.split())


def _as_ms(value: int) -> int:
    if isinstance(value, bool):
        raise TypeError("expected epoch milliseconds, got a bool")
    return value if isinstance(value, int) else math.floor(value)


@attrs.frozen
class Schedule:
    """When a job's ticks fall (see the module docstring). Build it with
    ``parse_schedule``; constructing it directly validates the same way and
    raises ``ValueError``. Equal schedules have equal text and time zone.
    Safe to share between threads."""

    text: str
    timezone: str = "UTC"
    _engine: _Every | _Cron = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        text = _normalise(self.text)
        if not isinstance(self.timezone, str):
            check_timezone(self.timezone)  # raises ValueError
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "_engine", _engine(text, self.timezone))

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms`` (epoch milliseconds). Raises
        ``ValueError`` only for cron schedules past the year 9989."""
        return self._engine.next_after(_as_ms(ms))

    def ticks_between(self, after_ms: int, until_ms: int, limit: int) -> list[int]:
        """The ticks ``t`` with ``after_ms < t <= until_ms``, ascending: the
        *first* ``limit`` of them (the earliest ones) when there are more."""
        return self._engine.ticks_between(_as_ms(after_ms), _as_ms(until_ms), limit)

    def previous_at_or_before(self, ms: int) -> int | None:
        """The latest tick ``<= ms``, or ``None`` if there is none in the
        supported range (cron schedules: from the year 10)."""
        return self._engine.previous_at_or_before(_as_ms(ms))


def parse_schedule(text: str, timezone: str = "UTC") -> Schedule:
    """A ``Schedule`` from its text and IANA time zone name; ``ValueError``
    with a message saying what is wrong (the bad field, the unknown zone...)."""
    return Schedule(_normalise(text), timezone)
