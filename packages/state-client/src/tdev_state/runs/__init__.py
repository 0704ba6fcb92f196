"""The run lifecycle: the transition table, the one writer that applies it, the stores built on it, the
item <-> model mappings, and the recovery policy.

Internal to tdev_state (the public faces are `tdev_state`, `tdev_state.client` and the other public
modules). Dependencies point down only: runs -> payloads -> storage, never back.
"""
