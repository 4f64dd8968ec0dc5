"""Sync: which frame and which audio window belong to a step, decided by timestamps alone."""
