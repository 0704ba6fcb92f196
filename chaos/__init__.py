"""`make chaos`: the fault tests, run for their figures (docs/reliability.md)."""
