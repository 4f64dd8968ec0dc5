"""Scheduler: when each stream's next step is due, and batching due steps of many streams into one call."""
