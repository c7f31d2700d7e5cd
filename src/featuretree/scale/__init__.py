"""Running shards of work in this process or on Ray actors (``--engine local|ray``)."""
