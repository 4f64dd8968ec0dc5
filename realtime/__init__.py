"""Realtime engine: sources, buffers, sync, scheduling, backends, post-processing, publishing. Imports no torch."""
