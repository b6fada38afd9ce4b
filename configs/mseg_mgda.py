"""MSeg-MGDA: the multi-objective baseline (mseg-semantic `config/train/1080_release/mseg-mgda.yaml`
with `use_mgda` set, as its comment says, on the command line).

`--config=configs/mseg_mgda.py`: the 7 relabeled datasets as tasks, 713 crops from 1080p,
global batch 35 (5 crops per dataset), 1M crops per dataset: 200,000 steps. Each step combines
the datasets' gradients with MGDA's min-norm weights (mgda.py), without gradient normalization.
Everything else as configs/mseg_3m.py:1080p.
"""

import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("mseg_3m", Path(__file__).with_name("mseg_3m.py"))
mseg_3m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mseg_3m)


def get_config() -> ml_collections.ConfigDict:
  config = mseg_3m.get_config("1080p")
  config.num_examples = 1_000_000
  config.mgda.enabled = True
  return config
