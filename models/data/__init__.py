"""Training data: synthetic and on-disk audio-visual event data sets."""
