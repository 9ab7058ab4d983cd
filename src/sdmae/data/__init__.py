"""Data: tile sources, per-sample-seeded augmentation, the global-batch loader."""
