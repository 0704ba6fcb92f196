"""The adoption helper's implementation; import it from `tdev_state.pipeline_run`."""
