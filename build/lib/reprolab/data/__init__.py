"""Datasets: the source registry (``sources/``), the split, and tensor loading."""
