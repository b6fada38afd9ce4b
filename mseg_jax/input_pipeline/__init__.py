"""MSeg data on disk -> uint8 host batches.

catalog (dataset name -> root and list files), sources (list files, decoding, input checks),
transforms (the official augmentations as grain transforms), batching (per-dataset shares of a
global batch), synthetic (a small composite for tests and demos), verify (a dataset checker CLI).
"""
