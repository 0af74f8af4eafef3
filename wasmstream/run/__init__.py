"""One run: the skeleton every path shares (local, shard, cluster, library), its executors, and
what a run decides and counts."""
