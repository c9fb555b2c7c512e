"""Whole slides, tile by tile on dask: ``segment`` builds the halo/ownership graph and writes a
zarr labels pyramid, ``segmenter`` wraps a model for the workers, ``edit`` writes a corrected
region back (journaled), ``cluster`` chooses local threads, local processes or a scheduler."""
