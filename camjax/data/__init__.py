"""Data sources, decoding, manipulations and the Grain input pipelines."""
