"""Evaluation throughput (images/s) on 1 device and on every device of the process.

  python benchmarks/bench_evaluate.py [--devices 1,4] [--model small] [--images 16]
      [--size 360x480] [--base-size 360] [--crop 361] [--batch-size 2]

On CPU the devices are simulated: XLA_FLAGS=--xla_force_host_platform_device_count=4 is set
unless XLA_FLAGS is (they share the host's cores). Writes a synthetic camvid-11 val list of
--images random images and evaluates it zero-shot with random weights (`evaluate.Evaluator`,
a Predictor and a thread per device), after a warm-up evaluation of one image per device
(compilation, once per device).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402 (after XLA_FLAGS)
from bench_model import random_variables  # noqa: E402 (the script's folder is on sys.path)

from mseg_jax import evaluate, models  # noqa: E402
from mseg_jax.input_pipeline import synthetic  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default="1,4", help="comma-separated device counts")
  parser.add_argument("--model", default="small", help="models.preset name")
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--size", default="360x480", help="HEIGHTxWIDTH of the images")
  parser.add_argument("--base-size", type=int, default=360)
  parser.add_argument("--crop", type=int, default=361)
  parser.add_argument("--batch-size", type=int, default=2)
  args = parser.parse_args()

  config = models.preset(args.model)
  model, variables = models.HRNet(config=config), random_variables(config)
  height, width = map(int, args.size.split("x"))
  print(
    f"{jax.device_count()} {jax.devices()[0].device_kind} devices ({jax.default_backend()}), "
    f"{os.cpu_count()} cores; model {args.model}, {args.images} images {width}x{height}, "
    f"base size {args.base_size}, crop {args.crop}, batch {args.batch_size}"
  )
  with tempfile.TemporaryDirectory() as tmp:
    data_root = synthetic.write_synthetic(
      tmp, num_train=0, num_val=0, num_test=args.images, size=(height, width)
    )
    rates = {}
    for n in map(int, args.devices.split(",")):
      devices = jax.devices()[:n]

      def evaluator(limit, devices=devices):
        spec = evaluate.Spec("camvid-11", base_size=args.base_size, crop=args.crop, limit=limit)
        return evaluate.Evaluator(
          model, variables, spec, data_root, batch_size=args.batch_size, devices=devices
        )

      t0 = time.perf_counter()
      evaluator(n).run()
      warmup = time.perf_counter() - t0
      run = evaluator(None)
      t0 = time.perf_counter()
      result = run.run()
      seconds = time.perf_counter() - t0
      rates[n] = args.images / seconds
      print(
        f"{n} device(s): {rates[n]:.2f} images/s ({seconds:.1f} s; warm-up {warmup:.1f} s), "
        f"mIoU {100 * result['miou']:.4f}"
      )
    first, *others = rates
    for n in others:
      print(f"speed-up {n} vs {first} device(s): {rates[n] / rates[first]:.2f}x")


if __name__ == "__main__":
  main()
