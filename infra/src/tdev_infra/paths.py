"""Where the repository is, for the make targets that read or build files in it (`make output`,
`make image`).

Why a search and not `Path(__file__).parents[N]`: this package lives in `infra/src/tdev_infra/`, so a fixed
count is easy to get wrong — it was: `parents[2]` is `infra/`, and `make output` then looked in
`infra/infra/cdktf.out`, `make image` in `infra/packages/`. The root is the directory that holds
`infra/cdktf.json`: upward from this file (the workspace's editable install), else upward from the current
directory (make runs from the root).
"""

from __future__ import annotations

from pathlib import Path

#: A file only the repository's root has, at this path below it.
MARKER = Path("infra") / "cdktf.json"


def repository_root(start: Path | None = None) -> Path:
    """The checkout's root directory; FileNotFoundError (one line: where to run from) when there is none."""
    places = [start] if start is not None else [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for place in places:
        for candidate in (place, *place.parents):
            if (candidate / MARKER).is_file():
                return candidate
    raise FileNotFoundError(
        f"no {MARKER} above {places[-1]}: run this from the repository's root (a checkout of the project)"
    )
