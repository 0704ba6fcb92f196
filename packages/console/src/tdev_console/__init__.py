"""T-Developer console: a web page over the state platform's tables (`tdev console`).

`create_app(client, ConsoleSettings(...))` returns the Starlette application; `tdev_console.cli` serves it.
It reads through tdev_state's public client, acts through tdev_recovery's `resume_pipeline` and
`abandon_pipeline`, and charts with tdev_metrics: it sits above all three packages.
"""

import logging

from tdev_console.app import ConsoleSettings, create_app

logging.getLogger("tdev_console").addHandler(logging.NullHandler())

__all__ = ["ConsoleSettings", "create_app"]
