"""Five-field cron (minute hour day-of-month month day-of-week, UTC) -> systemd OnCalendar.

The stack config speaks cron because everyone does; the nodes run systemd timers. Every
field is expanded to its set of values and written back as systemd ranges (``a..b``) and
lists, so steps (``*/15``, ``5-50/5``) and lists come out exact. Cron fires when *either*
the day of month or the day of week matches if both are restricted; systemd requires both,
so that case becomes two OnCalendar= lines (a timer fires on any of its lines).
"""


import datetime
import re
from typing import Callable

__all__ = ["CronError", "cron_to_oncalendar", "longest_interval", "runs_at"]

# name, lowest, highest
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
# systemd weeks start on Monday: Sunday (cron 0 or 7) goes last so ranges never wrap.
_DAYS = ("", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_ITEM = re.compile(r"(\*|([0-9]+)(?:-([0-9]+))?)(?:/([0-9]+))?")


class CronError(ValueError):
    """The expression is not a five-field cron expression with values in range."""


def _expand(text: str, name: str, lo: int, hi: int) -> tuple[set[int], bool]:
    """The values a field matches, and whether it is unrestricted (``*``)."""
    values: set[int] = set()
    for item in text.split(","):
        m = _ITEM.fullmatch(item)
        if not m:
            raise CronError(f"{name} field {text!r}: {item!r} is not *, N, N-M or one of them /STEP")
        step = int(m.group(4)) if m.group(4) else 1
        if step < 1:
            raise CronError(f"{name} field {text!r}: the step must be at least 1")
        if m.group(1) == "*":
            start, end = lo, hi
        else:
            start = int(m.group(2))
            end = int(m.group(3)) if m.group(3) else (hi if m.group(4) else start)
        if not (lo <= start <= hi and lo <= end <= hi) or start > end:
            raise CronError(f"{name} field {text!r}: values must be from {lo} to {hi}, low before high")
        values.update(range(start, end + 1, step))
    return values, text == "*"


def _runs(values: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v - 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _numbers(values: set[int], width: int) -> str:
    parts = []
    for a, b in _runs(sorted(values)):
        parts.append(f"{a:0{width}d}" if a == b else f"{a:0{width}d}..{b:0{width}d}")
    return ",".join(parts)


def _weekdays(values: set[int]) -> str:
    days = sorted({v or 7 for v in values})
    return ",".join(_DAYS[a] if a == b else f"{_DAYS[a]}..{_DAYS[b]}" for a, b in _runs(days))


def cron_to_oncalendar(expression: str) -> list[str]:
    """OnCalendar= values (UTC) equivalent to ``expression``; raises CronError if invalid.

    >>> cron_to_oncalendar("0 1 * * *")
    ['*-*-* 01:00:00 UTC']
    >>> cron_to_oncalendar("30 2 * * 0")
    ['Sun *-*-* 02:30:00 UTC']
    """
    fields = expression.split(" ")
    if len(fields) != 5:
        raise CronError(f"{expression!r} has {len(fields)} fields; cron has five (minute hour day month weekday)")
    (minute, _), (hour, _), (dom, dom_any), (month, month_any), (dow, dow_any) = (
        _expand(text, name, lo, hi) for text, (name, lo, hi) in zip(fields, _FIELDS))
    time = f"{_numbers(hour, 2)}:{_numbers(minute, 2)}:00"
    months = "*" if month_any else _numbers(month, 2)

    def line(days: str, weekdays: str | None) -> str:
        prefix = f"{weekdays} " if weekdays else ""
        return f"{prefix}*-{months}-{days} {time} UTC"

    if not dom_any and not dow_any:
        # cron: either matches; systemd: a timer fires on any of its OnCalendar= lines.
        return [line(_numbers(dom, 2), None), line("*", _weekdays(dow))]
    if not dow_any:
        return [line("*", _weekdays(dow))]
    return [line("*" if dom_any else _numbers(dom, 2), None)]


def _parse(expression: str) -> tuple[set[int], set[int], Callable[[datetime.datetime], bool]]:
    """(minutes, hours, whether a day matches) of a cron expression (cron's day-of-month OR
    day-of-week rule when both are restricted)."""
    fields = expression.split(" ")
    if len(fields) != 5:
        raise CronError(f"{expression!r} has {len(fields)} fields; cron has five (minute hour day month weekday)")
    (minute, _), (hour, _), (dom, dom_any), (month, _), (dow, dow_any) = (
        _expand(text, name, lo, hi) for text, (name, lo, hi) in zip(fields, _FIELDS))
    weekdays = {d % 7 for d in dow}

    def day_matches(day: datetime.datetime) -> bool:
        cron_weekday = (day.weekday() + 1) % 7  # cron: 0 is Sunday
        dom_hit, dow_hit = day.day in dom, cron_weekday in weekdays
        hit = (dom_hit or dow_hit) if not dom_any and not dow_any else (dom_hit and dow_hit)
        return day.month in month and hit
    return minute, hour, day_matches


def runs_at(expression: str, when: datetime.datetime) -> bool:
    """Whether ``expression`` fires in the minute of ``when`` (UTC)."""
    minute, hour, day_matches = _parse(expression)
    return when.minute in minute and when.hour in hour and day_matches(when)


def longest_interval(expression: str) -> datetime.timedelta | None:
    """The longest time between two consecutive runs of ``expression`` (cron's day-of-month OR
    day-of-week rule), over four years so leap days and month lengths count; None if it runs
    fewer than twice in them (``0 0 31 2 *``). Alerts on a schedule's missed run wait this long."""
    minute, hour, day_matches = _parse(expression)
    times = sorted(datetime.timedelta(hours=h, minutes=m) for h in hour for m in minute)
    runs: list[datetime.datetime] = []
    day = datetime.datetime(2024, 1, 1)
    for _ in range(4 * 365 + 1):
        if day_matches(day):
            runs.extend(day + t for t in times)
        day += datetime.timedelta(days=1)
    if len(runs) < 2:
        return None
    return max(b - a for a, b in zip(runs, runs[1:]))
