"""Buffers: fixed-memory stores between the source threads and the engine, read by timestamp."""
