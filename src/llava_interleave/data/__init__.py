"""Data: the typed interleaved sample, media loading, templates, processing, M4 datasets, collation, synthetic data."""
