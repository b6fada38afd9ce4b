"""From the downloaded datasets to MSeg on disk: download, remap, lists, relabel.

  python -m mseg_jax.prepare {download,lists,remap,relabel,all} --data-root D [--datasets ...]

`--data-root` is mseg-api's MSEG_DST_DIR, the same root `train` and `evaluate` read.
"""
