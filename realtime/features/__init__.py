"""Feature extraction shared by serving and training (numpy only)."""
