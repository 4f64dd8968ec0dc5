"""Post-processing: from per-step scores to per-segment predictions and event start/end boundaries."""
