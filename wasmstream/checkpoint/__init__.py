"""Checkpoints: the record, what a run records, the checks before resuming, the journal that
saves it, and the state files it refers to."""
