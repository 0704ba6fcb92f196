"""T-Developer recovery worker.

Finds failed and stalled pipeline runs through the state client's sparse recovery index and resumes each
exactly once (issue #6). Until then this package only fixes its import name and typing marker, so the
workspace, the lint and the type check cover it from the start.
"""

__all__: list[str] = []
