"""jmigctl: the client that drives jmig nodes."""
