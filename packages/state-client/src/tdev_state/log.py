"""The logging the T-Developer packages share, as a public face over `tdev_state._log`.

`get_logger(name)` is a structlog logger bound to stdlib `logging` (silent unless the host configures
logging); `configure_output(...)` is for entry points only — a CLI or a worker decides console or JSON lines.
The packages built on `tdev_state` import these names from here, never from the private module.
"""

from tdev_state._log import configure_output, get_logger

__all__ = ["configure_output", "get_logger"]
