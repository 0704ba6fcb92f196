"""The collector and its process: fork() hooks and the entry point's signal handlers.

A child forked after a collector started becomes a new writer with an empty buffer (see the collector's
`_after_fork_in_child`); a multiprocessing child, which ends without atexit, gets a final flush through
multiprocessing's finalizers. SIGTERM/SIGINT are the entry point's to handle: `install_signal_handlers`.
"""

from __future__ import annotations

import os
import signal
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any

from tdev_state.log import get_logger

if TYPE_CHECKING:
    from tdev_metrics.collector import MetricsCollector

log = get_logger(__name__)

#: Every collector of this process, for the fork hook (weak: a collector nobody holds is not kept alive).
LIVE: weakref.WeakSet[MetricsCollector] = weakref.WeakSet()


def reset_collectors_in_child() -> None:
    for collector in list(LIVE):
        try:
            collector._after_fork_in_child()
        except Exception as exc:  # never let a hook fail a fork; the collector says so when used
            log.error("metrics.fork_reset_failed", error=repr(exc))  # noqa: TRY400


def flush_at_multiprocessing_exit(collector: MetricsCollector) -> None:
    import multiprocessing.util  # only here, where multiprocessing is already in use

    multiprocessing.util.Finalize(collector, collector.close, exitpriority=10)


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=reset_collectors_in_child)


def install_signal_handlers(
    collector: MetricsCollector, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """For the process's entry point: on SIGTERM/SIGINT flush the collector, then do what the previous
    handler would have done (the default: terminate). Must be called from the main thread.

    A signal that lands while the main thread is inside record() or flush() is handled the moment it
    leaves them: flushing from inside would wait forever on the lock the main thread itself holds.
    """
    for signum in signals:
        previous = signal.getsignal(signum)

        def terminate(num: int, frame: FrameType | None, previous: Any = previous) -> None:
            collector.close()
            if callable(previous):
                previous(num, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(num, signal.SIG_DFL)
                signal.raise_signal(num)

        def handler(num: int, frame: FrameType | None, terminate: Any = terminate) -> None:
            if collector.in_critical_section():
                collector.defer_until_safe(lambda: terminate(num, frame))
            else:
                terminate(num, frame)

        signal.signal(signum, handler)
