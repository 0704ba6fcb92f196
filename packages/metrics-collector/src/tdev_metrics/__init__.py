"""T-Developer metrics collector.

Buffers and aggregates pipeline metrics in memory and flushes them to the metrics table exactly once
(issue #5). Until then this package only fixes its import name and typing marker, so the workspace, the
lint and the type check cover it from the start.
"""

__all__: list[str] = []
