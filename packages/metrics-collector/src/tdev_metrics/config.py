"""`CollectorConfig`: how the metrics collector buffers and delivers (validated when built)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tdev_metrics._usage_store import ITEM_BUDGET
from tdev_metrics._validate import show
from tdev_metrics.exceptions import MetricValidationError
from tdev_state.models import AGENTS


@dataclass(frozen=True, kw_only=True)
class CollectorConfig:
    """Buffering and delivery settings."""

    flush_interval: float = 10.0
    #: Records since the last flush that trigger an early one.
    flush_at_records: int = 50_000
    #: Distinct keys held in memory at most (buffered + awaiting delivery).
    max_keys: int = 10_000
    overflow: Literal["drop", "raise"] = "drop"
    #: Agents accepted; None accepts any well-formed name (the declared agents by default).
    agents: frozenset[str] | None = frozenset(AGENTS)
    max_backoff: float = 60.0
    #: Usage events of a run are held in memory until the run ends here, or this many seconds pass, so one
    #: flush writes a whole run's usage (tdev_metrics.usage).
    usage_hold_seconds: float = 300.0
    #: Bytes past which a usage item is marked full and writers go on in its next shard (a smaller item
    #: also makes each usage write cheaper: DynamoDB bills a write per KB of the item).
    usage_item_budget: int = ITEM_BUDGET

    def __post_init__(self) -> None:
        for name in ("flush_interval", "max_backoff", "usage_hold_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise MetricValidationError(
                    f"{name} must be a positive number of seconds, got {show(value, 40)}"
                )
        budget = self.usage_item_budget
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1024 <= budget <= 256 * 1024:
            raise MetricValidationError(
                f"usage_item_budget must be a whole number of bytes in 1024..262144, got {show(budget, 40)}"
            )
        for name in ("flush_at_records", "max_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MetricValidationError(f"{name} must be a whole number >= 1, got {show(value, 40)}")
        if self.overflow not in ("drop", "raise"):
            raise MetricValidationError(f"overflow must be 'drop' or 'raise', got {show(self.overflow, 40)}")
        agents: object = self.agents
        if agents is not None and (
            not isinstance(agents, set | frozenset) or not all(isinstance(a, str) and a for a in agents)
        ):
            raise MetricValidationError(
                f"agents must be a set of agent names or None, got {show(agents, 60)}"
            )
