"""The naive-merge baseline: `--config=configs/mseg_naive.py`.

mseg-semantic `config/train/1080_release/mseg-naive-baseline.yaml`: the 7 unrelabeled training
datasets with their labels mapped to the naive taxonomy (`use_naive_taxonomy`: the union of the
lower-cased class names, 316 outputs with logit 255 unused), 1M crops per dataset, global batch
28 (4 crops per dataset: 250,000 steps), 713 crops from 1080p. Evaluated zero-shot with the
naive projection (`--regime naive`). Everything else as configs/mseg_3m.py:1080p.
"""

import ml_collections

from configs import mseg_3m


def get_config() -> ml_collections.ConfigDict:
  config = mseg_3m.get_config("1080p")
  config.data.relabeled = False
  config.data.taxonomy = "naive"
  config.batch_size = 28
  config.num_examples = 1_000_000
  config.eval.regime = "naive"
  return config
