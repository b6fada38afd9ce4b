"""Demo: a small HRNet on the synthetic composite, then zero-shot on synthetic camvid-11.

`python -m mseg_jax.train --config=configs/demo.py --workdir=/tmp/mseg_demo` writes the
synthetic data to data/synthetic when missing (mseg_jax.input_pipeline.synthetic), trains 300
steps in the universal taxonomy and prints the camvid-11 zero-shot table (time, loss and mIoU of
a run: BENCHMARKS.md, "Training step").
"""

import ml_collections

from configs import mseg_3m


def get_config() -> ml_collections.ConfigDict:
  config = mseg_3m.get_config("480p")
  config.model.preset = "hrnet_w18"
  config.model.arch = dict(
    stage1_blocks=1,
    stage1_planes=16,
    stage_modules=(1, 1, 1),
    stage_blocks=((1, 1), (1, 1, 1), (1, 1, 1, 1)),
    stage_widths=((8, 16), (8, 16, 32), (8, 16, 32, 64)),
  )
  config.data.datasets = ("cityscapes-19", "ade20k-150", "mapillary-public65")
  config.data.relabeled = False
  config.data.data_root = "data/synthetic"
  config.data.synthetic = True  # write it when missing
  config.data.crop_size = 65
  config.data.short_size = 128
  config.data.num_workers = 0
  config.batch_size = 6
  config.total_steps = 300
  config.optim.base_lr = 0.05
  config.init.kind = "none"
  config.checkpoint.every_steps = 100
  config.log_every = 10
  config.eval.datasets = ("camvid-11",)
  config.eval.base_sizes = (128,)
  config.eval.crop = 129
  config.eval.batch_size = 4
  return config
