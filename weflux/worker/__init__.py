"""Background work: delivery and maintenance loops, in-process or as `weflux worker`."""
