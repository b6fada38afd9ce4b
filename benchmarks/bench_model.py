"""HRNet / PSPNet forward benchmark: inference time per batch, images/s, peak device memory.

  python benchmarks/bench_model.py --sizes 473 713                 # CPU, fp32, batch 1
  python benchmarks/bench_model.py --preset pspnet50 --sizes 473 713
  python benchmarks/bench_model.py --dtype bfloat16 --batch 16     # GPU
  python benchmarks/bench_model.py --plain   # no BN folding, default XLA options

Random weights, eval mode, logits at input size. Times are the median and min of --repeats
runs after one compile-and-run call; the process CPU time (all threads) is printed too, since
wall time on a shared machine depends on the other load.
"""

import argparse
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mseg_jax import models


def random_variables(config: models.HRNetConfig | models.PSPNetConfig, seed: int = 0) -> dict:
  """He-scaled random weights (numpy: jit-compiling HRNet.init is slow on CPU)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      fan_in = np.prod(leaf.shape[:3])
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    if "var" in name:
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return rng.uniform(-0.1, 0.1, leaf.shape).astype(np.float32) + ("scale" in name)

  abstract = models.convert.abstract_variables(config)
  return jax.tree_util.tree_map_with_path(draw, abstract)


def bench(model, variables, size: int, batch: int, repeats: int, tuned: bool) -> dict:
  if tuned:
    model, variables = models.fold_batch_norm(model, variables)
  variables = jax.device_put(variables)
  forward = jax.jit(
    lambda v, x: model.apply(v, x, train=False),
    compiler_options=models.compiler_options() if tuned else None,
  )
  x = np.random.default_rng(1).normal(size=(batch, size, size, 3)).astype(np.float32)
  x = jax.device_put(x)
  start = time.perf_counter()
  jax.block_until_ready(forward(variables, x))
  first = time.perf_counter() - start
  times, cpu_times = [], []
  for _ in tqdm(range(repeats), desc=f"{size}x{size} batch {batch}", leave=False):
    start, cpu_start = time.perf_counter(), time.process_time()
    jax.block_until_ready(forward(variables, x))
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    peak = f"device peak memory {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
  else:  # the CPU reports none: the process's peak RSS so far
    peak = f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
  return {
    "compile_and_first_s": first,
    "median_s": statistics.median(times),
    "min_s": min(times),
    "cpu_s": statistics.median(cpu_times),
    "images_per_s": batch / statistics.median(times),
    "peak": peak,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="hrnet_w48")
  parser.add_argument("--sizes", type=int, nargs="+", default=[473, 713])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--plain",
    dest="tuned",
    action="store_false",
    help="plain model.apply: no BN folding, default XLA compiler options",
  )
  args = parser.parse_args()

  config = models.preset(args.preset)
  model = models.build(config, jnp.dtype(args.dtype))
  variables = random_variables(config)
  print(
    f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, preset {args.preset}, {args.dtype}, "
    f"batch {args.batch}, "
    + ("folded BN + models.compiler_options()" if args.tuned else "plain model.apply")
  )
  for size in args.sizes:
    r = bench(model, variables, size, args.batch, args.repeats, args.tuned)
    print(
      f"{size}x{size}: median {r['median_s']:.3f} s, min {r['min_s']:.3f} s "
      f"(process CPU time {r['cpu_s']:.2f} s), "
      f"{r['images_per_s']:.2f} images/s, compile+first {r['compile_and_first_s']:.1f} s, "
      f"{r['peak']}",
      flush=True,
    )


if __name__ == "__main__":
  main()
