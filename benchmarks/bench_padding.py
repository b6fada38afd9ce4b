"""Padding overhead of every training recipe: slots per step and the share of padding slots.

  python benchmarks/bench_padding.py [--devices 1 2 4 7 8 16] [--max_device_batch 1 2 3 4]

A global batch of B crops on D devices runs in D * ceil(B / D) slots; the padding slots cost
compute but change nothing (masked out of BatchNorm and the loss). With --max_device_batch
(on 8 devices) the step runs in micro-batches, which may need more slots (not with MGDA).
Pure arithmetic of `train.make_plan`: no device needed.
"""

import argparse

from configs import mseg_1m, mseg_3m, mseg_mgda, mseg_naive, pspnet, single_dataset
from mseg_jax import train

RECIPES = {
  "mseg_3m.py:480p": lambda: mseg_3m.get_config("480p"),
  "mseg_3m.py:720p": lambda: mseg_3m.get_config("720p"),
  "mseg_3m.py:1080p": lambda: mseg_3m.get_config("1080p"),
  "mseg_1m.py:relabeled": lambda: mseg_1m.get_config("relabeled"),
  "mseg_1m.py:unrelabeled": lambda: mseg_1m.get_config("unrelabeled"),
  "single_dataset.py:<name>": lambda: single_dataset.get_config("cityscapes-19"),
  "pspnet.py:1080p": lambda: pspnet.get_config("1080p"),
  "mseg_mgda.py": mseg_mgda.get_config,
  "mseg_naive.py": mseg_naive.get_config,
}


def plan(recipe: str, devices: int, max_device_batch: int | None = None) -> train.Plan:
  config = RECIPES[recipe]()
  config.data.data_root = "unused"
  config.init.kind = "none"
  config.max_device_batch = max_device_batch
  return train.make_plan(config, devices=devices, processes=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 7, 8, 16])
  parser.add_argument("--max_device_batch", type=int, nargs="+", default=[1, 2, 3, 4])
  args = parser.parse_args()

  print("| recipe | batch | " + " | ".join(f"D={d}" for d in args.devices) + " |")
  print("|---|---|" + "---|" * len(args.devices))
  for recipe in RECIPES:
    plans = [plan(recipe, d) for d in args.devices]
    cells = [
      f"{p.slots} slots, {100 * (p.slots - p.config.batch_size) / p.slots:.1f}%" for p in plans
    ]
    print(f"| {recipe} | {plans[0].config.batch_size} | " + " | ".join(cells) + " |")

  print("\nOn 8 devices with config.max_device_batch (slots per device x micro-batches):")
  print("| recipe | " + " | ".join(f"max {m}" for m in args.max_device_batch) + " |")
  print("|---|" + "---|" * len(args.max_device_batch))
  for recipe in RECIPES:
    if RECIPES[recipe]().mgda.enabled:
      continue  # MGDA needs the whole step in one pass
    plans = [plan(recipe, 8, m) for m in args.max_device_batch]
    cells = [
      f"{p.device_slots // p.micro_batches} x {p.micro_batches}, "
      f"{100 * (p.slots - p.config.batch_size) / p.slots:.1f}%"
      for p in plans
    ]
    print(f"| {recipe} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
