"""One way to say "when" on every command line and page of the platform: moments, durations, date ranges.

Why one module: `tdev sessions list` took `--day D --days N`, `tdev usage report` `--from D --to D` or
`--days N`, `tdev metrics report` `--from D --to D` (and read `--from D` alone as one day, where the usage
report read it as up to today), `tdev backlog` `--older-than 30m`. An operator who scripts them had to
remember four grammars. Now every command that takes dates has the same three options, read here once:

- `--since WHEN` (alias `--from`): the range's start; `--until WHEN` (alias `--to`): its end (default: now);
  `--days N`: the N UTC days ending with --until's day (today included), instead of --since.
- WHEN is a UTC day `2026-11-26` (as --since: its first moment; as --until: the whole day is included), a
  UTC moment `2026-11-26T14:30` / `2026-11-26T14:30:05Z` / with an offset `+02:00`, a time before now
  `90s`, `30m`, `12h`, `7d`, or `now`.

A bad value is one line naming the accepted forms, exit 2 (the `command.Parser` convention); a range that
ends before it starts, or spans more than MAX_RANGE_DAYS, is one line too. Commands that read by day (the
usage report, the by-day index) cover every UTC day the range touches; commands that have finer rows (the
metrics report's hours, a run's start) keep only what falls inside it.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from tdev_state.exceptions import ValidationError

#: The longest range one command reads (one Query per day in the reports and the by-day listing).
MAX_RANGE_DAYS = 366

#: What a WHEN may be, for every error message and --help.
WHEN_FORMS = (
    "a UTC day 2026-11-26, a UTC time 2026-11-26T14:30[:05][Z|+02:00], a time ago 90s/30m/12h/7d, or now"
)

_DURATION = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)\s*(s|m|h|d)?")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_LONGEST = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """`90`, `90s`, `30m`, `2h`, `1d` (a bare number is seconds), up to 3650 days; ValidationError else."""
    match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise ValidationError(f"{text!r:.40} is not a duration: use e.g. 90s, 30m, 2h, 1d")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > _LONGEST.total_seconds():
        raise ValidationError(f"{text!r:.40} is longer than 3650 days")
    return timedelta(seconds=seconds)


def duration(text: str) -> timedelta:
    """An argparse type: a duration as `parse_duration` reads it (a bad one is argparse's one-line error)."""
    try:
        return parse_duration(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class When:
    """A WHEN as written, not yet placed in time (a relative one needs the command's `now`)."""

    text: str
    day: date | None = None
    at: datetime | None = None
    ago: timedelta | None = None

    def start(self, now: datetime) -> datetime:
        """As a range's start: a day's first moment."""
        if self.day is not None:
            return datetime.combine(self.day, time(), UTC)
        return self._moment(now)

    def end(self, now: datetime) -> datetime:
        """As a range's end (exclusive): the moment after a day's last, so the whole day is in."""
        if self.day is not None:
            return datetime.combine(self.day + timedelta(days=1), time(), UTC)
        return self._moment(now)

    def _moment(self, now: datetime) -> datetime:
        if self.at is not None:
            return self.at
        return now - (self.ago or timedelta(0))


def parse_when(text: str) -> When:
    """A WHEN (see WHEN_FORMS); ValidationError naming the accepted forms otherwise."""
    if not isinstance(text, str):
        raise ValidationError(f"{text!r:.40} is not a time: use {WHEN_FORMS}")
    value = text.strip()
    if value.lower() == "now":
        return When(value, ago=timedelta(0))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return When(value, day=date.fromisoformat(value))
        except ValueError:
            raise ValidationError(f"{text!r:.40} is not a day of the calendar: use {WHEN_FORMS}") from None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?", value):
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"{text!r:.40} is not a time of the calendar: use {WHEN_FORMS}") from None
        try:
            return When(value, at=(at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC))
        except OverflowError:  # 9999-12-31T23:59-02:00 is in year 10000 in UTC
            raise ValidationError(f"{text!r:.40} is outside the calendar in UTC: use {WHEN_FORMS}") from None
    if re.fullmatch(r"\d{1,9}(\.\d{1,6})?\s*[smhd]", value.lower()):
        return When(value, ago=parse_duration(value))
    raise ValidationError(f"{text!r:.40} is not a time: use {WHEN_FORMS}")


def when(text: str) -> When:
    """An argparse type: a WHEN (a bad one is argparse's one-line error naming the accepted forms)."""
    try:
        return parse_when(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str) -> int:
    if not (text.isascii() and text.isdecimal() and len(text) <= 3) or not 1 <= int(text) <= MAX_RANGE_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 1 to {MAX_RANGE_DAYS}")
    return int(text)


@dataclass(frozen=True)
class DateRange:
    """A half-open span of time [start, end), both UTC."""

    start: datetime
    end: datetime

    @classmethod
    def resolve(
        cls,
        *,
        since: When | None,
        until: When | None,
        days: int | None,
        now: datetime,
        default_days: int = 1,
    ) -> DateRange:
        """The range the options say, at `now`; ValidationError if it is empty or longer than
        MAX_RANGE_DAYS. Without --since and --days: the `default_days` UTC days ending with --until's."""
        if since is not None and days is not None:
            raise ValidationError("give --since (--from) or --days, not both")
        try:
            end = until.end(now) if until is not None else now
            if since is not None:
                start = since.start(now)
            else:
                last_day = (end - timedelta(microseconds=1)).date() if until is not None else end.date()
                start = datetime.combine(last_day - timedelta(days=(days or default_days) - 1), time(), UTC)
        except OverflowError:  # --until 9999-12-31 ends in year 10000; --until 0001-01-01 --days 5 before 1
            raise ValidationError("the range leaves the calendar (years 1-9999): narrow it") from None
        if end > datetime.combine(date.max, time(), UTC):  # a by-day read steps past its last day
            raise ValidationError("the range leaves the calendar (years 1-9999): narrow it")
        if start >= end:
            raise ValidationError(
                f"the range is empty: it starts {start:%Y-%m-%dT%H:%M:%SZ} and ends {end:%Y-%m-%dT%H:%M:%SZ}"
                "; since must come before until"
            )
        if end - start > timedelta(days=MAX_RANGE_DAYS):
            raise ValidationError(f"the range spans more than {MAX_RANGE_DAYS} days: narrow since/until")
        return cls(start, end)

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last UTC day with a moment inside the range."""
        return (self.end - timedelta(microseconds=1)).date()

    def days(self) -> list[date]:
        """Every UTC day the range touches, oldest first (what a by-day read covers)."""
        count = (self.last_day - self.first_day).days + 1
        return [self.first_day + timedelta(days=n) for n in range(count)]

    def contains(self, moment: datetime) -> bool:
        """Is `moment` inside the range?"""
        return self.start <= moment < self.end

    def overlaps(self, start: datetime, length: timedelta) -> bool:
        """Does [start, start + length) share a moment with the range (an hour's row, a day's)?"""
        return start < self.end and start + length > self.start

    def label(self) -> str:
        """The range as a title says it: whole days as days, else moments to the minute."""
        midnight = time()
        if self.start.time() == midnight and self.end.time() == midnight:
            first, last = self.first_day.isoformat(), self.last_day.isoformat()
            return first if first == last else f"{first}..{last}"
        return f"{self.start:%Y-%m-%dT%H:%MZ}..{self.end:%Y-%m-%dT%H:%MZ}"


def add_range_options(
    parser: argparse.ArgumentParser, *, default: str, until_aliases: tuple[str, ...] = ()
) -> None:
    """The date-range options of a command: --since/--from, --until/--to (and `until_aliases`, a command's
    older spelling), --days. `default` says in --help what the range is when none is given."""
    forms = WHEN_FORMS.replace(", a time ago", ",\n  a time ago")
    about = f"WHEN is {forms}.\nWithout any: {default}."
    group = parser.add_argument_group("date range (UTC)", about)
    start = group.add_mutually_exclusive_group()
    start.add_argument(
        "--since", "--from", dest="since", type=when, default=None, metavar="WHEN", help="the range's start"
    )
    start.add_argument(
        "--days",
        type=_days,
        default=None,
        metavar="N",
        help=f"the N UTC days ending with --until's day (today without --until), that day included "
        f"(1-{MAX_RANGE_DAYS})",
    )
    group.add_argument(
        "--until",
        "--to",
        *until_aliases,
        dest="until",
        type=when,
        default=None,
        metavar="WHEN",
        help="the range's end; a day includes the whole day (default: now)",
    )


def range_given(args: argparse.Namespace) -> bool:
    """Did the user say anything about dates (some listings read differently without a range)?"""
    return any(getattr(args, name, None) is not None for name in ("since", "until", "days"))


def date_range(args: argparse.Namespace, now: datetime, *, default_days: int = 1) -> DateRange:
    """The range `add_range_options`' options give, at `now` (ValidationError: one line, exit 2)."""
    return DateRange.resolve(
        since=args.since, until=args.until, days=args.days, now=now, default_days=default_days
    )
