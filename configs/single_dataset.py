"""One training dataset: `--config=configs/single_dataset.py:<name>[,oracle]`.

mseg-semantic `config/train/1080_release/single_{universal,oracle}.yaml`: 1M crops, global batch
32 (31,250 steps), 713 crops from 1080p. `<name>` (e.g. `cityscapes-19`) trains in the universal
taxonomy (the paper's single-dataset baselines); `<name>,oracle` in the dataset's own taxonomy
(the oracle models, evaluated on that dataset's test split).
"""

import ml_collections

from configs import mseg_3m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if not arg:
    raise ValueError("configs/single_dataset.py needs a dataset: single_dataset.py:<name>[,oracle]")
  name, *mode = arg.split(",")
  if mode not in ([], ["oracle"]):
    raise ValueError(f"configs/single_dataset.py:{arg}: the only option is ',oracle'")
  config = mseg_3m.get_config("1080p")
  config.data.datasets = (name,)
  config.data.relabeled = False
  config.data.taxonomy = "dataset" if mode else "universal"
  config.batch_size = 32
  config.num_examples = 1_000_000
  return config
