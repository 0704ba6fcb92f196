"""The container's HEALTHCHECK: GET /healthz on the port the worker actually bound.

    python -m tdev_recovery.healthcheck        # exit 0 healthy, 1 not

The port comes from the file the worker writes (`--port-file` / `$TDEV_PORT_FILE`), so `--http-port 9000`
on the command line is honoured; without the file, `$TDEV_HTTP_PORT`, else 8080.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def port() -> int:
    """The port to probe: the worker's port file first, then the setting."""
    path = os.environ.get("TDEV_PORT_FILE")
    if path:
        try:
            return int(Path(path).read_text().strip())
        except (OSError, ValueError):
            pass  # not written yet (starting) or unreadable: fall back to the setting
    try:
        return int(os.environ.get("TDEV_HTTP_PORT") or 8080)
    except ValueError:
        return 8080


def main() -> int:
    url = f"http://127.0.0.1:{port()}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
