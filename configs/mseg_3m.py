"""MSeg-3m: HRNet-W48 on the 7 training datasets, 3M crops per dataset (official recipe).

`--config=configs/mseg_3m.py:1080p` (or 480p, 720p), from mseg-semantic
`config/train/{480,720,1080}_release/mseg-3m.yaml` / `mseg-relabeled-3m.yaml`: each global
batch holds batch_size/7 crops of every dataset; total_steps = 3M // that (1080p: 600,000).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from mseg_jax import taxonomy

# resolution -> (crop, short side, global batch)
RECIPES = {"480p": (473, 480, 84), "720p": (593, 720, 49), "1080p": (713, 1080, 35)}


def get_config(arg: str = "1080p") -> ml_collections.ConfigDict:
  if arg not in RECIPES:
    raise ValueError(f"configs/mseg_3m.py:{arg}: use one of {sorted(RECIPES)}")
  crop, short, batch = RECIPES[arg]
  config = ml_collections.ConfigDict()
  config.model = dict(preset="hrnet_w48", arch={})  # arch: HRNetConfig fields to replace
  config.dtype = "float32"  # or "bfloat16" (compute; params, BN stats and loss stay fp32)
  config.data = dict(
    datasets=taxonomy.UNRELABELED_TRAIN_DATASETS,
    relabeled=True,  # train on the "-relabeled" masks (False: mseg-unrelabeled)
    # labels mapped to the 194-class "universal" taxonomy, the 316-output "naive" merge, or
    # ("dataset") kept in the one dataset's own taxonomy
    taxonomy="universal",
    data_root=placeholder(str),
    roots={},  # {dataset: root} overrides of catalog.DEFAULT_ROOTS
    # per-taxonomy lists <lists_dir>/<name>/list/train.txt, as in mseg-api's mseg/dataset_lists;
    # None reads <data_root>/dataset_lists, where `python -m mseg_jax.prepare lists` writes them
    lists_dir=placeholder(str),
    synthetic=False,
    crop_size=crop,
    short_size=short,
    scale_range=(0.5, 2.0),  # official scale_min, scale_max
    rotate_range=(-10.0, 10.0),  # official rotate_min, rotate_max (degrees)
    num_workers=8,  # grain worker processes per host (README: about 4-5 per GPU)
  )
  config.batch_size = batch  # global; split evenly over the datasets, padded to the devices
  # crops one device runs in one forward/backward; a smaller share than the step's runs it in
  # micro-batches, whose BatchNorm statistics are their own (not the official step)
  config.max_device_batch = placeholder(int)
  config.num_examples = 3_000_000  # crops per dataset
  config.total_steps = placeholder(int)  # None: num_examples // (batch_size / #datasets)
  config.optim = dict(base_lr=0.01, momentum=0.9, weight_decay=1e-4, power=0.9)
  # MGDA (mgda.py; official use_mgda): min-norm weights of the datasets' gradients instead of
  # their mean. normalization: none (official), l2, loss or loss+. tasks_per_pass: datasets
  # backpropagated at once (0: all; more needs more memory, and is slower on CPU).
  config.mgda = dict(enabled=False, normalization="none", tasks_per_pass=1)
  config.init = dict(kind="imagenet", checkpoint=placeholder(str))  # or "finetune" / "none"
  config.checkpoint = dict(every_steps=5000, keep=2)
  config.log_every = 20
  config.seed = 0
  config.resume_despite_changes = False  # resume a checkpoint whose config computes differently
  config.compilation_cache = True  # compiled steps in <workdir>/jax_cache, for a faster resume
  config.distributed = dict(
    enabled=False,
    cpu_collectives="gloo",  # how CPU devices of several processes talk
    coordinator_address=placeholder(str),
    num_processes=placeholder(int),
    process_id=placeholder(int),
  )
  # Optional validation during training: single-scale mIoU on the first `limit` images of each
  # dataset's val list every `every_steps` steps (0: off), in metrics.jsonl and TensorBoard.
  config.validation = dict(
    every_steps=0, datasets=(), limit=300, base_size=1080, crop=713, batch_size=8
  )
  config.eval = dict(
    datasets=(),
    regime="zero_shot",
    base_sizes=(1080,),  # the paper: (360, 720, 1080), the table takes the best
    crop=713,
    scales=(1.0,),
    batch_size=8,
    limit=placeholder(int),
  )
  return config
