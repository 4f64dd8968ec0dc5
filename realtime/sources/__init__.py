"""Sources: where timestamped frames and audio come from (files, network streams, devices)."""
