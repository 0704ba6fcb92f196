"""Runnable examples of adopting the state layer."""
