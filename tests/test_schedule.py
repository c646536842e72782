"""peer.jobs.cron: durations, cron / nickname / @every ticks, time zones and DST."""

from __future__ import annotations

import calendar
import itertools
import random
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.jobs.cron import Schedule, check_timezone, parse_duration, parse_schedule


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Epoch milliseconds of a UTC wall time."""
    return calendar.timegm((year, month, day, hour, minute, second)) * 1000


def local(tick: int, zone: str) -> str:
    return datetime.fromtimestamp(tick / 1000, ZoneInfo(zone)).strftime("%m-%d %H:%M:%S%z")


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5s", 1.5),
        ("1m30s250ms", 90.25),
        ("30", 30.0),
        (" 10s ", 10.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (-1, ">= 0"),
        (float("nan"), ">= 0"),
        (float("inf"), ">= 0"),
        (True, "bool"),
        (None, "NoneType"),
        ([1], "list"),
        ("", "empty"),
        ("5x", "not a duration"),
        ("-5s", "not a duration"),
        ("s", "not a duration"),
        ("30s5m", "largest first"),
        ("1s1s", "largest first"),
        ("1 h x", "not a duration"),
    ],
)
def test_parse_duration_refuses(value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration(value)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "zone", "words"),
    [
        ("61 * * * *", "UTC", r"minute '61' out of range 0-59"),
        ("* 24 * * *", "UTC", r"hour '24' out of range 0-23"),
        ("* * 0 * *", "UTC", r"day of month '0'"),
        ("* * * 13 *", "UTC", r"month '13' out of range"),
        ("* * * * 8", "UTC", r"day of week '8' out of range"),
        ("60 * * * * *", "UTC", r"second '60' out of range 0-59"),
        ("*/0 * * * *", "UTC", r"minute '\*/0' has a bad step"),
        ("abc * * * *", "UTC", r"minute 'abc' not understood"),
        ("* * * *", "UTC", r"expected 5 fields .* or 6 .* got 4"),
        ("* * * * * * *", "UTC", r"got 7"),
        ("", "UTC", r"empty schedule"),
        ("   ", "UTC", r"empty schedule"),
        ("@reboot", "UTC", r"not a schedule nickname"),
        ("@daily extra", "UTC", r"not a schedule nickname"),
        ("@every", "UTC", r"@every needs an interval"),
        ("@every 50ms", "UTC", r"at least 100ms"),
        ("@every 0", "UTC", r"at least 100ms"),
        ("@every 100.5ms", "UTC", r"whole number of milliseconds"),
        ("@every 3651d", "UTC", r"at most 3650d"),
        ("@every 99999999999999999999999999999999999999999999999d", "UTC", r"at most 3650d"),
        ("@every soon", "UTC", r"not a duration"),
        ("H * * * *", "UTC", r"hashed and random"),
        ("R 2 * * *", "UTC", r"hashed and random"),
        ("0 0 30 2 *", "UTC", r"never fires"),
        ("*/5 * * * *", "Mars/Olympus_Mons", r"unknown time zone 'Mars/Olympus_Mons'"),
        ("*/5 * * * *", "utc", r"unknown time zone 'utc'"),
        ("*/5 * * * *", "localtime", r"unknown time zone 'localtime'"),
        ("*/5 * * * *", "../etc/passwd", r"unknown time zone"),
        ("*/5 * * * *", "", r"unknown time zone ''"),
    ],
)
def test_parse_schedule_refuses(text: str, zone: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_schedule(text, zone)


def test_parse_schedule_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="expected a schedule string"):
        parse_schedule(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        parse_schedule("* * * * *", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        check_timezone(3)
    with pytest.raises(ValueError, match="time zone"):
        Schedule("* * * * *", ["UTC"])  # type: ignore[arg-type]


@settings(max_examples=300)
@given(
    text=st.one_of(
        st.text(alphabet="0123456789*/-,LW#? @HRhr", max_size=30),
        st.lists(
            st.text(alphabet="0123456789*/-,LW#?abcdefghijklmnoprstuvwxyz", min_size=1, max_size=6), min_size=5, max_size=6
        ).map(" ".join),
        st.text(max_size=20).map(lambda tail: "@every " + tail),
    )
)
def test_parse_schedule_refuses_garbage_with_value_error_only(text: str) -> None:
    try:
        schedule = parse_schedule(text, "Europe/Paris")
    except ValueError:
        return
    first = schedule.next_after(ms(2026, 1, 1))
    assert first > ms(2026, 1, 1)
    assert schedule.previous_at_or_before(first) == first


def test_text_is_normalised_and_schedules_compare_by_value() -> None:
    schedule = parse_schedule("  */5   *\t* * *  ", "Europe/Paris")
    assert schedule.text == "*/5 * * * *"
    assert schedule.timezone == "Europe/Paris"
    assert schedule == Schedule("*/5 * * * *", "Europe/Paris")
    assert Schedule(" */5 * * * * ", "Europe/Paris") == schedule
    assert schedule != parse_schedule("*/5 * * * *")
    assert len({schedule, Schedule("*/5 * * * *", "Europe/Paris")}) == 1
    assert repr(schedule) == "Schedule(text='*/5 * * * *', timezone='Europe/Paris')"
    with pytest.raises(ValueError, match="minute"):
        Schedule("61 * * * *")


# --------------------------------------------------------------------------- cron in UTC


def test_five_fields() -> None:
    every5 = parse_schedule("*/5 * * * *")
    assert every5.next_after(ms(2026, 1, 1, 12, 0)) == ms(2026, 1, 1, 12, 5)
    assert every5.next_after(ms(2026, 1, 1, 12, 0) - 1) == ms(2026, 1, 1, 12, 0)
    assert every5.next_after(ms(2026, 1, 1, 12, 3, 59) + 999) == ms(2026, 1, 1, 12, 5)
    assert every5.next_after(ms(2026, 12, 31, 23, 58)) == ms(2027, 1, 1)
    assert every5.previous_at_or_before(ms(2026, 1, 1, 12, 5)) == ms(2026, 1, 1, 12, 5)
    assert every5.previous_at_or_before(ms(2026, 1, 1, 12, 5) - 1) == ms(2026, 1, 1, 12, 0)
    weekdays = parse_schedule("30 9 * * mon-fri")
    # 2026-01-02 is a Friday: the next is Monday 2026-01-05
    assert weekdays.next_after(ms(2026, 1, 2, 9, 30)) == ms(2026, 1, 5, 9, 30)
    assert weekdays.previous_at_or_before(ms(2026, 1, 4, 23, 0)) == ms(2026, 1, 2, 9, 30)
    leap = parse_schedule("0 12 29 2 *")
    assert leap.next_after(ms(2026, 1, 1)) == ms(2028, 2, 29, 12)
    assert leap.next_after(ms(2096, 3, 1)) == ms(2104, 2, 29, 12)  # 2100 is not a leap year
    assert leap.previous_at_or_before(ms(2027, 1, 1)) == ms(2024, 2, 29, 12)
    # either day field matches when both are restricted (classic cron)
    either = parse_schedule("0 0 13 * fri")
    assert either.ticks_between(ms(2026, 2, 1), ms(2026, 2, 28), 10) == [
        ms(2026, 2, d) for d in (6, 13, 20, 27)
    ]


def test_six_fields_have_seconds_first() -> None:
    every10s = parse_schedule("*/10 * * * * *")
    assert every10s.next_after(ms(2026, 5, 1, 8, 0, 0)) == ms(2026, 5, 1, 8, 0, 10)
    assert every10s.next_after(ms(2026, 5, 1, 8, 0, 55)) == ms(2026, 5, 1, 8, 1, 0)
    assert every10s.next_after(ms(2026, 5, 1, 8, 0, 9) + 999) == ms(2026, 5, 1, 8, 0, 10)
    assert every10s.previous_at_or_before(ms(2026, 5, 1, 8, 0, 19) + 999) == ms(2026, 5, 1, 8, 0, 10)
    exact = parse_schedule("15 30 2 * * *")
    assert exact.next_after(ms(2026, 5, 1)) == ms(2026, 5, 1, 2, 30, 15)
    assert exact.ticks_between(ms(2026, 5, 1), ms(2026, 5, 3, 23), 10) == [
        ms(2026, 5, d, 2, 30, 15) for d in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("nickname", "expression"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_nicknames(nickname: str, expression: str) -> None:
    named, spelled = parse_schedule(nickname, "Asia/Tokyo"), parse_schedule(expression, "Asia/Tokyo")
    start = ms(2026, 6, 15, 13, 17)
    assert named.ticks_between(start, start + 800 * 86_400_000, 5) == spelled.ticks_between(
        start, start + 800 * 86_400_000, 5
    )
    assert named.text == nickname


def test_daily_is_utc_midnight_and_weekly_is_sunday() -> None:
    assert parse_schedule("@daily").next_after(ms(2026, 3, 3, 5)) == ms(2026, 3, 4)
    assert parse_schedule("@weekly").next_after(ms(2026, 3, 3, 5)) == ms(2026, 3, 8)  # a Sunday
    assert parse_schedule("@yearly").next_after(ms(2026, 3, 3)) == ms(2027, 1, 1)


def test_croniter_does_not_see_the_machine_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = parse_schedule("30 2 * * *")
    before = schedule.next_after(ms(2026, 3, 29))
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert schedule.next_after(ms(2026, 3, 29)) == before == ms(2026, 3, 29, 2, 30)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_ticks_between_takes_the_first_ones() -> None:
    hourly = parse_schedule("0 * * * *")
    start = ms(2026, 1, 1)
    assert hourly.ticks_between(start, start + 10 * 3_600_000, 3) == [start + h * 3_600_000 for h in (1, 2, 3)]
    assert hourly.ticks_between(start - 1, start + 3_600_000, 100) == [start, start + 3_600_000]
    assert hourly.ticks_between(start, start + 3_600_000 - 1, 100) == []
    assert hourly.ticks_between(start, start - 5, 100) == []
    assert hourly.ticks_between(start, start + 10 * 3_600_000, 0) == []


def test_out_of_range_years() -> None:
    daily = parse_schedule("0 0 * * *")
    assert daily.previous_at_or_before(ms(5, 1, 1)) is None
    with pytest.raises(ValueError, match="no tick"):
        daily.next_after(ms(9995, 1, 1))
    assert daily.ticks_between(ms(9989, 12, 30), ms(9999, 1, 1), 10) == [ms(9989, 12, 31)]


# --------------------------------------------------------------------------- @every


def test_every_is_anchored_to_the_epoch() -> None:
    every30 = parse_schedule("@every 30s")
    assert every30.next_after(0) == 30_000
    assert every30.next_after(29_999) == 30_000
    assert every30.next_after(30_000) == 60_000
    assert every30.next_after(-1) == 0
    assert every30.previous_at_or_before(59_999) == 30_000
    assert every30.previous_at_or_before(-1) == -30_000
    odd = parse_schedule("@every 1m30s")
    now = 1_780_000_012_345
    tick = odd.next_after(now)
    assert tick % 90_000 == 0 and now < tick <= now + 90_000
    assert odd.ticks_between(0, 400_000, 3) == [90_000, 180_000, 270_000]
    assert odd.ticks_between(0, 200_000, 10) == [90_000, 180_000]
    assert parse_schedule("@every 100ms").ticks_between(1_000, 1_300, 10) == [1_100, 1_200, 1_300]


def test_every_ignores_the_time_zone() -> None:
    utc = parse_schedule("@every 1h")
    paris = parse_schedule("@every 1h", "Europe/Paris")
    start = ms(2026, 3, 28, 20)
    assert utc.ticks_between(start, start + 86_400_000, 30) == paris.ticks_between(start, start + 86_400_000, 30)
    assert utc != paris  # the zone is still part of the value


@given(
    interval=st.integers(min_value=100, max_value=10**10),
    start=st.integers(min_value=-(10**13), max_value=10**13),
    shift=st.integers(min_value=0, max_value=10**9),
)
def test_every_names_the_same_ticks_from_any_start(interval: int, start: int, shift: int) -> None:
    schedule = parse_schedule(f"@every {interval}ms")
    tick = schedule.next_after(start)
    assert tick % interval == 0 and start < tick <= start + interval
    later = schedule.next_after(start + shift)
    assert (later - tick) % interval == 0
    assert schedule.previous_at_or_before(tick + shift) == (tick + shift) // interval * interval


# --------------------------------------------------------------------------- time zones


def test_time_zone_moves_the_wall_clock() -> None:
    nine = parse_schedule("0 9 * * *", "Europe/Paris")
    assert nine.next_after(ms(2026, 1, 10)) == ms(2026, 1, 10, 8)  # CET, UTC+1
    assert nine.next_after(ms(2026, 7, 10)) == ms(2026, 7, 10, 7)  # CEST, UTC+2
    tokyo = parse_schedule("0 0 * * *", "Asia/Tokyo")
    assert tokyo.next_after(ms(2026, 7, 10)) == ms(2026, 7, 10, 15)
    kolkata = parse_schedule("0 0 * * *", "Asia/Kolkata")
    assert kolkata.next_after(ms(2026, 7, 10)) == ms(2026, 7, 10, 18, 30)


# DST transitions in 2026, hand-computed:
#   Europe/Paris      2026-03-29 01:00Z: 02:00 CET -> 03:00 CEST (02:00-02:59 do not exist)
#                     2026-10-25 01:00Z: 03:00 CEST -> 02:00 CET (02:00-02:59 happen twice)
#   America/New_York  2026-03-08 07:00Z: 02:00 EST -> 03:00 EDT (02:00-02:59 do not exist)
#                     2026-11-01 06:00Z: 02:00 EDT -> 01:00 EST (01:00-01:59 happen twice)
DST_CASES = [
    # a time-of-day job in the gap runs once, when the clock jumps
    ("30 2 * * *", "Europe/Paris", ms(2026, 3, 28), [ms(2026, 3, 28, 1, 30), ms(2026, 3, 29, 1), ms(2026, 3, 30, 0, 30)]),
    ("0 2,3 * * *", "Europe/Paris", ms(2026, 3, 28, 12), [ms(2026, 3, 29, 1), ms(2026, 3, 30, 0), ms(2026, 3, 30, 1)]),
    ("*/20 2 * * *", "Europe/Paris", ms(2026, 3, 28, 12), [ms(2026, 3, 29, 1), ms(2026, 3, 30, 0), ms(2026, 3, 30, 0, 20)]),
    # a periodic job skips the wall times that do not exist
    ("30 * * * *", "Europe/Paris", ms(2026, 3, 28, 23), [ms(2026, 3, 28, 23, 30), ms(2026, 3, 29, 0, 30), ms(2026, 3, 29, 1, 30)]),
    # a time-of-day job in the repeated hour runs once, at the first occurrence
    ("30 2 * * *", "Europe/Paris", ms(2026, 10, 24), [ms(2026, 10, 24, 0, 30), ms(2026, 10, 25, 0, 30), ms(2026, 10, 26, 1, 30)]),
    (
        "*/20 2 * * *", "Europe/Paris", ms(2026, 10, 24, 12),
        [ms(2026, 10, 25, 0), ms(2026, 10, 25, 0, 20), ms(2026, 10, 25, 0, 40), ms(2026, 10, 26, 1)],
    ),
    # a periodic job keeps its rhythm in real time through the repeated hour
    (
        "30 * * * *", "Europe/Paris", ms(2026, 10, 24, 23),
        [ms(2026, 10, 24, 23, 30), ms(2026, 10, 25, 0, 30), ms(2026, 10, 25, 1, 30), ms(2026, 10, 25, 2, 30)],
    ),
    (
        "*/30 * * * * ", "Europe/Paris", ms(2026, 10, 25, 0, 10),
        [ms(2026, 10, 25, 0, 30), ms(2026, 10, 25, 1), ms(2026, 10, 25, 1, 30), ms(2026, 10, 25, 2)],
    ),
    ("0 * * * * *", "Europe/Paris", ms(2026, 10, 25, 0, 58, 30), [ms(2026, 10, 25, 0, 59), ms(2026, 10, 25, 1, 0), ms(2026, 10, 25, 1, 1)]),
    ("30 2 * * *", "America/New_York", ms(2026, 3, 7), [ms(2026, 3, 7, 7, 30), ms(2026, 3, 8, 7), ms(2026, 3, 9, 6, 30)]),
    ("30 * * * *", "America/New_York", ms(2026, 3, 8, 5), [ms(2026, 3, 8, 5, 30), ms(2026, 3, 8, 6, 30), ms(2026, 3, 8, 7, 30)]),
    ("30 1 * * *", "America/New_York", ms(2026, 10, 31), [ms(2026, 10, 31, 5, 30), ms(2026, 11, 1, 5, 30), ms(2026, 11, 2, 6, 30)]),
    ("30 2 * * *", "America/New_York", ms(2026, 10, 31), [ms(2026, 10, 31, 6, 30), ms(2026, 11, 1, 7, 30), ms(2026, 11, 2, 7, 30)]),
    (
        "*/30 * * * *", "America/New_York", ms(2026, 11, 1, 4, 50),
        [ms(2026, 11, 1, 5), ms(2026, 11, 1, 5, 30), ms(2026, 11, 1, 6), ms(2026, 11, 1, 6, 30), ms(2026, 11, 1, 7)],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "zone", "start", "expected"), DST_CASES)
def test_dst(text: str, zone: str, start: int, expected: list[int]) -> None:
    schedule = parse_schedule(text, zone)
    got = schedule.ticks_between(start, expected[-1], 100)
    assert [local(t, zone) for t in got] == [local(t, zone) for t in expected]
    for before, tick in zip([start, *expected], expected):
        assert schedule.next_after(before) == tick
        assert schedule.previous_at_or_before(tick) == tick
        if before != start:
            assert schedule.previous_at_or_before(tick - 1) == before


def test_midnight_gap() -> None:
    # America/Havana springs forward at midnight: 2026-03-08 00:00 CST -> 01:00 CDT (05:00Z)
    midnight = parse_schedule("0 0 * * *", "America/Havana")
    assert midnight.ticks_between(ms(2026, 3, 6, 12), ms(2026, 3, 9, 12), 10) == [
        ms(2026, 3, 7, 5),
        ms(2026, 3, 8, 5),  # 01:00 CDT, when the clock jumped
        ms(2026, 3, 9, 4),
    ]


def transitions(zone: str, year: int) -> list[int]:
    """Epoch seconds where the zone's offset changes in ``year`` (to 15 min)."""
    tz = ZoneInfo(zone)
    found = []
    t = calendar.timegm((year, 1, 1, 0, 0, 0))
    last = datetime.fromtimestamp(t, tz).utcoffset()
    for _ in range(366 * 96):
        t += 900
        offset = datetime.fromtimestamp(t, tz).utcoffset()
        if offset != last:
            found.append(t)
            last = offset
    return found


CONSISTENCY_ZONES = [
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",  # half-hour DST
    "Pacific/Chatham",  # transitions at 02:45 / 03:45
    "America/Santiago",  # transitions at midnight
    "Europe/Dublin",  # "negative" DST in tzdata
]
CONSISTENCY_EXPRESSIONS = [
    "30 2 * * *",
    "0 * * * *",
    "*/15 * * * *",
    "*/15 2 * * *",
    "0,30 0-3 * * *",
    "45 1-3 * * *",
    "0 0 * * *",
    "59 23 * * *",
    "*/7 * * * *",
    "30 */2 * * *",
    "0 */20 2 * * *",
]


@pytest.mark.parametrize("zone", CONSISTENCY_ZONES)
def test_every_start_names_the_same_ticks_across_dst(zone: str) -> None:
    """Around each transition: ticks strictly increase, and next_after /
    previous_at_or_before from any instant agree with the walked sequence."""
    rng = random.Random(zone)
    for transition in transitions(zone, 2026):
        low, high = (transition - 86400) * 1000, (transition + 86400) * 1000
        for text in CONSISTENCY_EXPRESSIONS:
            schedule = parse_schedule(text, zone)
            ticks = schedule.ticks_between(low, high, 10_000)
            assert ticks, (zone, text)
            assert all(a < b for a, b in itertools.pairwise(ticks)), (zone, text)
            first = schedule.previous_at_or_before(low)
            assert first is not None and first <= low
            walked = [first, *ticks, schedule.next_after(high)]
            for _ in range(15):
                instant = rng.randrange(low, high)
                index = next(i for i, t in enumerate(walked) if t > instant)
                assert schedule.next_after(instant) == walked[index], (zone, text, instant)
                assert schedule.previous_at_or_before(instant) == walked[index - 1], (zone, text, instant)
            for tick in rng.sample(ticks, min(10, len(ticks))):
                assert schedule.next_after(tick - 1) == tick
                assert schedule.previous_at_or_before(tick) == tick


# --------------------------------------------------------------------------- random expressions

_minute = st.one_of(
    st.integers(0, 59).map(str),
    st.sampled_from(["*/13", "*/20", "5-10/5", "0,30", "7,44"]),
)
_hour = st.one_of(st.integers(0, 23).map(str), st.sampled_from(["*", "*/5", "1-3", "2", "0,2,23"]))
_day = st.one_of(st.just("*"), st.integers(1, 31).map(str), st.sampled_from(["1-7", "*/10", "L", "15W"]))
_month = st.one_of(st.just("*"), st.integers(1, 12).map(str), st.sampled_from(["3,10", "*/4", "jan-mar"]))
_weekday = st.one_of(st.just("*"), st.integers(0, 7).map(str), st.sampled_from(["mon-fri", "sun", "5#2", "1L"]))
_expressions = st.tuples(_minute, _hour, _day, _month, _weekday).map(" ".join)


def _valid(text: str, zone: str = "UTC") -> Schedule | None:
    try:
        return parse_schedule(text, zone)
    except ValueError:
        return None


@settings(max_examples=25, deadline=None)
@given(text=_expressions, zone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]))
def test_random_expressions_tick_strictly_increasing_over_a_year(text: str, zone: str) -> None:
    schedule = _valid(text, zone)
    if schedule is None:
        return
    start = ms(2026, 1, 1)
    ticks = schedule.ticks_between(start, ms(2027, 1, 1), 1500)
    assert all(a < b for a, b in itertools.pairwise(ticks))
    assert all(t % 1000 == 0 for t in ticks)
    for a, b in zip([start, *ticks], ticks):
        if a != start:
            assert schedule.previous_at_or_before(b - 1) == a
    if zone == "UTC":
        # no DST: exactly croniter's ticks
        reference = croniter(text, start / 1000)
        assert ticks == [round(reference.get_next(float)) * 1000 for _ in ticks]


@settings(max_examples=25, deadline=None)
@given(text=_expressions)
def test_random_expressions_match_croniter_away_from_dst(text: str) -> None:
    """On days without a transition, Europe/Paris ticks are croniter's."""
    schedule = _valid(text, "Europe/Paris")
    if schedule is None:
        return
    zone = ZoneInfo("Europe/Paris")
    dst_days = {"2026-03-29", "2026-10-25"}
    ours = [
        t
        for t in schedule.ticks_between(ms(2026, 1, 1), ms(2026, 12, 31), 400)
        if datetime.fromtimestamp(t / 1000, zone).strftime("%Y-%m-%d") not in dst_days
    ]
    if not ours:
        return
    reference = croniter(text, datetime(2026, 1, 1, tzinfo=UTC).astimezone(zone))
    theirs: list[int] = []
    while len(theirs) < len(ours) + 4:
        moment = reference.get_next(datetime)
        if moment.strftime("%Y-%m-%d") not in dst_days:
            theirs.append(round(moment.timestamp()) * 1000)
    assert ours == theirs[: len(ours)]


def test_next_after_is_fast_enough() -> None:
    schedule = parse_schedule("*/5 * * * *", "Europe/Paris")
    schedule.next_after(ms(2026, 1, 1))
    started = time.perf_counter()
    for index in range(500):
        schedule.next_after(ms(2026, 1, 1) + index * 7_777)
    assert time.perf_counter() - started < 1.0  # ~30 us each; a loose bound
    assert parse_schedule("*/5 * * * *", "Europe/Paris")._engine is schedule._engine  # type: ignore[attr-defined]


def test_float_instants_are_floored() -> None:
    schedule = parse_schedule("*/5 * * * *")
    assert schedule.next_after(ms(2026, 1, 1) + 0.5) == ms(2026, 1, 1, 0, 5)  # type: ignore[arg-type]
    assert schedule.previous_at_or_before(ms(2026, 1, 1) - 0.5) == ms(2025, 12, 31, 23, 55)  # type: ignore[arg-type]
