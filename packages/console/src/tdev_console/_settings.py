"""How one console runs: a frozen dataclass, like the worker's and the client's settings."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tdev_console._http import LOOPBACK_NAMES
from tdev_recovery import Resumer, WorkerConfig, recovery_policy
from tdev_state import RecoveryPolicy, RunPolicy, ValidationError


@dataclass(frozen=True, kw_only=True)
class ConsoleSettings:
    """How one console runs. `token` is required when `allow_actions` is on (the CLI makes one per start)."""

    allow_actions: bool = False
    token: str | None = None
    resumer: Resumer | None = None
    resumer_name: str | None = None
    #: The recovery worker's setting, and the console's with it: None (the worker's default) — a run is
    #: stalled once the window its pipeline declared has passed; a timedelta — one threshold for every agent.
    #: What "stalled" and "may be acted on" mean is `tdev_state.RecoveryPolicy`, shaped by it.
    stall_threshold: timedelta | None = None
    page_size: int = 50
    refresh_seconds: float = 5.0
    #: Mark the session cookie Secure (behind a TLS-terminating load balancer).
    secure_cookies: bool = False
    #: Signs the session cookie; random per start, so a restart logs every browser out.
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: The claim owner the actions write (the run's recovery history shows it).
    worker_id: str = field(default_factory=lambda: f"console-{socket.gethostname()}-{os.getpid()}")
    #: The Host header values served (`name` for any port, or `name:port`); anything else is refused
    #: before any handler runs (DNS rebinding). The CLI narrows this to the bound port and adds
    #: --allowed-host names.
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    #: Clock (tests move it).
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.allow_actions and not self.token:
            raise ValidationError("allow_actions needs a token: the per-start secret a browser presents")
        if not self.allowed_hosts:
            raise ValidationError("allowed_hosts must be a non-empty tuple of host names (or name:port)")
        if not 1 <= self.page_size <= 100:
            raise ValidationError(f"page_size {self.page_size} must be 1..100 (one BatchGetItem per page)")
        if self.stall_threshold is not None and (
            not isinstance(self.stall_threshold, timedelta) or self.stall_threshold <= timedelta(0)
        ):
            raise ValidationError(
                f"stall_threshold must be a positive timedelta or None, got {self.stall_threshold!r:.60}"
            )

    def worker_config(self) -> WorkerConfig:
        """The settings the console's actions claim under: the recovery worker's own, as an operator."""
        return WorkerConfig(worker_id=self.worker_id, stall_threshold=self.stall_threshold)

    def policy(self, run_policy: RunPolicy) -> RecoveryPolicy:
        """The one rule for "stalled" and "may be acted on", as the worker with these settings has it."""
        return recovery_policy(self.worker_config(), run_policy)
