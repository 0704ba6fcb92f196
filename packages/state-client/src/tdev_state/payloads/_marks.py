"""The library's own markers inside a payload's JSON, and the values they read back as (see `_jsonform`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

NUL = "\x00"
LOSSY_MARK = "\x00tdev-lossy"
LOSSY_KEY = "\x00tdev-key:"
OUTPUT_MARK = "\x00tdev-output"
#: Deeper values are refused (or, lossy, cut off). The walk takes up to three Python frames per level, and
#: must stay well inside Python's default recursion limit (1,000) whatever the caller's own stack depth.
MAX_DEPTH = 200
_MAX_TEXT = 1000
_IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)

Encoders = Mapping[type, Callable[[Any], Any]]


class LossyValue(str):
    """A value read back from its marked lossy form: its documented text (e.g. "NaN", a repr), marked.

    A `str`, so it serializes and prints like one; `type_name` and `reason` say what it was and why it could
    not be stored exactly.
    """

    type_name: str
    reason: str

    def __new__(cls, text: str, type_name: str = "", reason: str = "") -> LossyValue:
        made = super().__new__(cls, text)
        made.type_name, made.reason = type_name, reason
        return made


@dataclass(frozen=True)
class OutputRef:
    """An earlier agent's output inside a decoded accumulated input, before it is resolved (`_inputs`)."""

    agent: str
