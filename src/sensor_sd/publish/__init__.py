"""The publishers, side by side: each takes the store's snapshots to one place Prometheus reads.

`file` writes TARGETS_FILE (file_sd) as a subscriber of the store; `http` makes the
bodies of http_sd's `/targets` (whole or one shard, gzip or not) from the snapshot the
server reads. Neither knows of the other, of the poller or of the scheduler.
"""
