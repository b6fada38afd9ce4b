"""Train-step throughput, memory and host time of a model (HRNet-W48 by default) on the local
devices.

  python benchmarks/bench_train.py --crop 473 --batch 2 --dtype float32 [--preset hrnet_w48]
      [--micro_batches K] [--winograd-min-channels N]

Runs the real jitted `train.train_step` (state donated, batch sharded over all devices, the XLA
options of train.py: `models.compiler_options()`) on a random uint8 batch of 7 datasets'
labels. Prints compile time, step time (median of --steps),
images/s, the host time per step (building the global batch + dispatching the step, which
overlaps the device work) and memory: XLA's buffer analysis of the step, the process's peak
RSS and, on GPU, the device's peak bytes in use.

  python benchmarks/bench_train.py --preset small --crop 129 --batch 7 --mgda compare

`--mgda on` times the MGDA step instead (one backward per dataset, `--tasks-per-pass` at a
time, 0 = all at once); `--mgda compare` times the plain step, then the MGDA step, and prints
MGDA's step time over the plain one. `--micro_batches K` runs each step in K passes
(config.max_device_batch): compare its memory and time with K=1 at the same batch.
`--winograd-min-channels` sets `hrnet.WINOGRAD_MIN_CHANNELS` for this run (a huge value turns
the CPU step's Winograd convolutions off).
"""

import argparse
import functools
import resource
import statistics
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mseg_jax import models, taxonomy, train


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="hrnet_w48")
  parser.add_argument("--crop", type=int, default=473)
  parser.add_argument("--batch", type=int, default=2, help="global batch")
  parser.add_argument("--dtype", choices=sorted(train.DTYPES), default="float32")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument(
    "--default-options", action="store_true", help="default XLA options, not train.py's"
  )
  parser.add_argument("--micro_batches", type=int, default=1, help="passes per step")
  parser.add_argument("--mgda", choices=("off", "on", "compare"), default="off")
  parser.add_argument("--tasks-per-pass", type=int, default=1, help="MGDA; 0: all at once")
  parser.add_argument(
    "--winograd-min-channels", type=int, default=models.hrnet.WINOGRAD_MIN_CHANNELS
  )
  args = parser.parse_args()
  models.hrnet.WINOGRAD_MIN_CHANNELS = args.winograd_min_channels

  mesh = train.make_mesh()
  jax.set_mesh(mesh)
  print(
    f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  model: {args.preset}  "
    f"crop: {args.crop}  batch: {args.batch}  dtype: {args.dtype}  "
    f"micro-batches: {args.micro_batches}  Winograd from {args.winograd_min_channels} channels"
  )
  mgda_options = dict(normalization="none", tasks_per_pass=args.tasks_per_pass)
  modes = {"off": [None], "on": [mgda_options], "compare": [None, mgda_options]}[args.mgda]
  medians = [time_step(args, mesh, options) for options in modes]
  if len(medians) == 2:
    print(f"MGDA step / plain step: {medians[1] / medians[0]:.2f}x")
  print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    print(f"device peak memory: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")


def time_step(args: argparse.Namespace, mesh: jax.sharding.Mesh, mgda_options) -> float:
  """Compiles and times one step kind; prints its numbers and returns the median step time."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  model = models.build(models.preset(args.preset), train.DTYPES[args.dtype])
  optim = ml_collections.ConfigDict(dict(base_lr=0.01, momentum=0.9, weight_decay=1e-4, power=0.9))
  tx, schedule = train.create_optimizer(optim, 600_000)
  luts = taxonomy.stacked_luts(taxonomy.RELABELED_TRAIN_DATASETS)
  state = jax.device_put(
    jax.jit(functools.partial(train.init_state, model, tx))(jax.random.key(0)), replicated
  )
  rng = np.random.default_rng(0)
  host = {
    "image": rng.integers(0, 256, (args.batch, args.crop, args.crop, 3), np.uint8),
    "label": rng.integers(0, 20, (args.batch, args.crop, args.crop), np.uint8),
    "dataset": np.arange(args.batch, dtype=np.int32) % len(luts),
  }
  step = jax.jit(
    functools.partial(
      train.train_step,
      model=model,
      luts=luts,
      tx=tx,
      schedule=schedule,
      micro_batches=args.micro_batches,
      mgda_options=mgda_options,
    ),
    donate_argnums=0,
    out_shardings=replicated,
    compiler_options=None if args.default_options else models.compiler_options(),
  )
  start = time.perf_counter()
  compiled = step.lower(state, train.global_batch(host, data)).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()  # serializes the HLO module: 0.5 GiB of heap for W48
  train.release_freed_memory()  # as train.py does before its first step; after the line above

  state, metrics = compiled(state, train.global_batch(host, data))  # warm-up
  jax.block_until_ready(metrics)
  step_s, host_s = [], []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, train.global_batch(host, data))
    host_s.append(time.perf_counter() - start)
    jax.block_until_ready((state, metrics))
    step_s.append(time.perf_counter() - start)
  loss = float(metrics["loss"])
  assert np.isfinite(loss), loss

  median = statistics.median(step_s)
  if mgda_options is None:
    print("plain step:")
  else:
    print(f"MGDA step ({len(luts)} datasets, {args.tasks_per_pass or 'all'} per backward pass):")
  print(f"compile: {compile_s:.1f} s")
  print(
    f"step: {median:.3f} s (median of {args.steps}; min {min(step_s):.3f}, "
    f"max {max(step_s):.3f})  ->  {args.batch / median:.2f} images/s"
  )
  print(f"host time per step (global batch + dispatch): {1e3 * statistics.median(host_s):.1f} ms")
  if memory is not None:
    gib = 2.0**30
    print(
      f"XLA buffers: temp {memory.temp_size_in_bytes / gib:.2f} GiB, arguments "
      f"{memory.argument_size_in_bytes / gib:.2f} GiB, outputs "
      f"{memory.output_size_in_bytes / gib:.2f} GiB"
    )
  return median


if __name__ == "__main__":
  main()
