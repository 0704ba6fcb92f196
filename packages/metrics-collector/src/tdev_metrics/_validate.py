"""What record() accepts: names, values and timestamps, each accepted exactly or refused with
MetricValidationError (never OverflowError, a ValueError from repr() of a huge int, or a caller's tzinfo
exception: issue 23.16)."""

from __future__ import annotations

import math
import numbers
from datetime import datetime

from tdev_metrics.exceptions import MetricValidationError

NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")

#: A value's square is aggregated (sumsq): it must stay inside DynamoDB's number range (1e-130 .. 9.99e125)
#: even summed over many records.
LARGEST = 1e50
SMALLEST = 1e-50
#: Ints up to 2**53 are exactly floats; larger ones are checked one by one.
EXACT_INT = 2**53
#: Timestamps are epoch seconds from 2000 to a day ahead: milliseconds (x1000) or a datetime.max are refused.
EARLIEST = 946_684_800.0


def show(value: object, limit: int) -> str:
    """A value for an error message, whatever it is: repr() of an int past 4,300 digits raises ValueError,
    and a caller's object may have a __repr__ that raises."""
    if type(value) is int and value.bit_length() > 256:
        return f"<an int of {value.bit_length()} bits>"
    try:
        return repr(value)[:limit]
    except Exception:
        return f"<{type(value).__name__} whose repr() failed>"


def out_of_range(value: object) -> MetricValidationError:
    return MetricValidationError(
        f"value {show(value, 40)} is outside what the metrics table can aggregate (0, or a magnitude "
        f"between {SMALLEST:g} and {LARGEST:g}: its square must fit DynamoDB's number range)"
    )


def exact_float(value: object) -> float:
    """`value` as the float it exactly equals, or MetricValidationError (never OverflowError & co).

    Accepted: ints (not bools) and any other real number type — numpy scalars, Decimal, Fraction — whose
    value a float holds exactly (the aggregate is kept in floats: accepting Decimal("0.1") or 2**53 + 1
    would store a different number than was recorded). Out-of-range magnitudes (10**400) are reported as
    such by the caller's range check, which runs on the float or on infinity.
    """
    if type(value) is int:
        if -EXACT_INT <= value <= EXACT_INT:
            return float(value)
        if not -LARGEST <= value <= LARGEST:  # int-float comparisons are exact and never overflow
            raise out_of_range(value)
        if float(value) != value:
            raise MetricValidationError(
                f"value {show(value, 40)} has more significant bits than a float holds (53); pass "
                "float(value) to accept the rounding"
            )
        return float(value)
    real = isinstance(value, numbers.Real) or (  # Decimal is a Number, not a Real; complex is not real
        isinstance(value, numbers.Number) and not isinstance(value, numbers.Complex)
    )
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not real:
        raise MetricValidationError(
            f"value must be a real number (int, float, or a numpy/Decimal/Fraction equal to a float), got "
            f"{type(value).__name__} {show(value, 40)}"
        )
    try:
        number = float(value)  # type: ignore[arg-type]  # a numbers.Number, checked above
        exact = number == value or (number != number and value != value)  # noqa: PLR0124 - NaN test
        too_large = math.isinf(number) and not exact  # Decimal("1e400") becomes inf without an error
    except OverflowError:
        raise out_of_range(value) from None
    except Exception as exc:  # a number type whose conversion or comparison raises (Decimal sNaN, ...)
        raise MetricValidationError(
            f"value {show(value, 40)} cannot be converted to a float: {type(exc).__name__}"
        ) from None
    if too_large:
        raise out_of_range(value)
    if not exact:
        raise MetricValidationError(
            f"value {show(value, 40)} has no exact float value (it would be stored as {number!r}); pass "
            "float(value) to accept the rounding"
        )
    return number


def checked_name(field_name: str, name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= NAME_OK:
        raise MetricValidationError(
            f"{field_name} {show(name, 80)} must be 1-64 characters of letters, digits, '_', '-' or '.'"
        )
    return name


def epoch_seconds(timestamp: object, now: float) -> float:
    """A record's time as epoch seconds, refusing what is not a plausible moment (ms, far future)."""
    if isinstance(timestamp, datetime):
        try:
            moment = timestamp.timestamp()  # naive datetimes are local time, as datetime.now() gives
        except Exception:  # out of range, or a tzinfo whose utcoffset() raises: not a usable moment
            moment = math.inf
    elif type(timestamp) is float:
        moment = timestamp
    elif type(timestamp) is int:
        # Compared as an int first: float(10**400) would raise OverflowError.
        moment = float(timestamp) if abs(timestamp) < EXACT_INT else math.inf
    else:
        raise MetricValidationError(
            f"timestamp must be a datetime or epoch seconds, got {show(timestamp, 60)}"
        )
    if not (EARLIEST <= moment <= now + 86_400):
        hint = " (it looks like milliseconds: divide by 1000)" if now * 100 < moment < now * 10_000 else ""
        raise MetricValidationError(
            f"timestamp {show(timestamp, 40)} is not a moment between 2000 and a day from now{hint}; "
            "send epoch seconds or a datetime"
        )
    return moment
