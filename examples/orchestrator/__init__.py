"""T-Developer's production orchestrator in miniature: `before.py` (as it is today, storing nothing) and
`after.py` (adopted exactly as docs/adoption.md shows), with fake agents (`agents.py`) that succeed or fail
in the orchestrator's three ways: returning `success=False`, raising, and timing out.

Run it: `uv run python -m examples.orchestrator` (LocalStack, `make localstack-up`) — see docs/adoption.md.
"""
