"""MSeg-1m: 1M crops per dataset (mseg-semantic `config/train/1080_release/mseg-*-1m.yaml`).

`--config=configs/mseg_1m.py` (or `:relabeled`): mseg-relabeled-1m, global batch 14 (2 crops
per dataset), 500,000 steps. `:unrelabeled`: mseg-unrelabeled, batch 35, 200,000 steps.
Everything else as configs/mseg_3m.py:1080p.
"""

import ml_collections

from configs import mseg_3m

BATCH = {"relabeled": 14, "unrelabeled": 35}


def get_config(arg: str = "relabeled") -> ml_collections.ConfigDict:
  if arg not in BATCH:
    raise ValueError(f"configs/mseg_1m.py:{arg}: use one of {sorted(BATCH)}")
  config = mseg_3m.get_config("1080p")
  config.data.relabeled = arg == "relabeled"
  config.batch_size = BATCH[arg]
  config.num_examples = 1_000_000
  return config
