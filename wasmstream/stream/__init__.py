"""Bytes in and out: input sources, framing, parts and shards, the sink, pipes, and the locks
on the files a run writes."""
