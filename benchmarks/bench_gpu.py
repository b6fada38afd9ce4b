"""One GPU run of everything BENCHMARKS.md records for an accelerator, in under 8 minutes.

  python benchmarks/bench_gpu.py                    # GPU: W48, the full table
  python benchmarks/bench_gpu.py --tiny             # any device: tiny sizes, checks the script
  python benchmarks/bench_gpu.py --only train_step  # some: forward train_step predictor batched
  python benchmarks/bench_gpu.py --only train_step --trace /tmp/trace  # + one profiled step

Prints, per line: forward images/s (fp32 and bf16; batch 1/16/32; 473 and 713; BN folded, eval),
the train step (713 crops, 5 per device, fp32 and bf16: s/step, images/s), the end-to-end
Predictor (1920x1080 frames, base 360 and 720, single scale, flip) and the batched single-crop
mode (frames/s). Random weights. The forward and the train step also print their compile time
and their executable's device memory (arguments + outputs - donated + XLA temporaries), which
is theirs alone; the Predictor lines print the process's device peak so far (JAX cannot reset
it). The items run most wanted first (the roofline's forward, the train steps, base 720), and
those that would start after --budget-s (default 420 s) are skipped and say so. `--trace DIR`
profiles one more train step per dtype into DIR/<dtype> (`jax.profiler`, with a perfetto trace).
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from bench_model import random_variables
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mseg_jax import inference, models, single_crop, taxonomy, train

ROOFLINE = "~3,300 img/s for W48 bf16 inference at 473^2 on an H100"


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first call s, median of `repeats` later calls s); fn returns something to block on."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def peak_gib() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", float("nan")) / 2**30


def compile_timed(jitted, *args):
  """(compiled executable, compile seconds, its device memory in GiB)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  used = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return compiled, seconds, (used + m.temp_size_in_bytes) / 2**30


def forward(config, variables, dtype, size: int, batch: int, repeats: int) -> str:
  model, folded = models.fold_batch_norm(models.build(config, dtype), variables)
  folded = jax.device_put(folded)
  fn = jax.jit(
    lambda v, x: model.apply(v, x, train=False), compiler_options=models.compiler_options()
  )
  x = jax.device_put(
    np.random.default_rng(1).normal(size=(batch, size, size, 3)).astype(np.float32)
  )
  compiled, compile_s, memory = compile_timed(fn, folded, x)
  _, median = timed(lambda: compiled(folded, x), repeats)
  return (
    f"forward {jnp.dtype(dtype).name} {size}^2 batch {batch}: {batch / median:.1f} img/s "
    f"({median * 1e3:.1f} ms/batch, compile {compile_s:.1f} s, memory {memory:.2f} GiB)"
  )


def train_step(
  config, dtype, crop: int, per_device: int, repeats: int, trace: str | None = None
) -> str:
  mesh = train.make_mesh()
  jax.set_mesh(mesh)
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  model = models.HRNet(config=config, dtype=dtype)
  optim = ml_collections.ConfigDict(dict(base_lr=0.01, momentum=0.9, weight_decay=1e-4, power=0.9))
  tx, schedule = train.create_optimizer(optim, 600_000)
  luts = taxonomy.stacked_luts(taxonomy.RELABELED_TRAIN_DATASETS)
  variables = jax.tree.map(jnp.asarray, random_variables(config))
  state = jax.device_put(train.init_state(model, tx, None, variables), replicated)
  batch = per_device * jax.device_count()
  rng = np.random.default_rng(0)
  host = {
    "image": rng.integers(0, 256, (batch, crop, crop, 3), np.uint8),
    "label": rng.integers(0, 20, (batch, crop, crop), np.uint8),
    "dataset": np.arange(batch, dtype=np.int32) % len(luts),
  }
  step = jax.jit(
    functools.partial(train.train_step, model=model, luts=luts, tx=tx, schedule=schedule),
    donate_argnums=0,
    out_shardings=replicated,
    compiler_options=models.compiler_options(),
  )
  global_batch = train.global_batch(host, data)
  compiled, compile_s, memory = compile_timed(step, state, global_batch)
  box = [state]

  def run():
    box[0], metrics = compiled(box[0], global_batch)
    return metrics

  first, median = timed(run, repeats)
  if trace:
    with jax.profiler.trace(f"{trace}/{jnp.dtype(dtype).name}", create_perfetto_trace=True):
      jax.block_until_ready(run())
  return (
    f"train step {jnp.dtype(dtype).name} {crop}^2 x {per_device}/device x {jax.device_count()}: "
    f"{median:.3f} s/step, {batch / median:.1f} img/s (compile {compile_s:.1f} s, first step "
    f"{first:.1f} s), memory {memory:.2f} GiB, process device peak {peak_gib():.2f} GiB"
  )


def predictor(config, variables, dtype, size: tuple[int, int], base: int, batch: int, n: int):
  model = models.build(config, dtype)
  pred = inference.Predictor(model, variables, base_size=base, batch_size=batch, dtype=dtype)
  frame = np.random.default_rng(2).integers(0, 256, (*size, 3), np.uint8)
  first, median = timed(lambda: pred(frame), n)
  return (
    f"Predictor {jnp.dtype(dtype).name} {size[1]}x{size[0]} base {base} ss, {batch} windows/call: "
    f"{1 / median:.2f} img/s (first {first:.1f} s, process device peak {peak_gib():.2f} GiB)"
  )


def batched(config, variables, dtype, size: tuple[int, int], crop: int, frames: int, n: int):
  model = models.build(config, dtype)
  pred = single_crop.SingleCropPredictor(model, variables, crop=crop, dtype=dtype)
  batch = np.random.default_rng(3).integers(0, 256, (frames, *size, 3), np.uint8)
  first, median = timed(lambda: pred(batch), n)
  return (
    f"single crop {jnp.dtype(dtype).name} {size[1]}x{size[0]} crop {crop}, {frames} frames/call: "
    f"{frames / median:.1f} frames/s (first {first:.1f} s, process device peak "
    f"{peak_gib():.2f} GiB)"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true", help="small preset and sizes (CPU check)")
  parser.add_argument("--budget-s", type=float, default=420)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--trace", metavar="DIR", help="profile one more train step per dtype here")
  parser.add_argument(
    "--only",
    nargs="+",
    choices=("forward", "train_step", "predictor", "batched"),
    help="run only these items (default: all)",
  )
  args = parser.parse_args()
  start = time.perf_counter()
  fp32, bf16 = jnp.float32, jnp.bfloat16
  if args.tiny:
    config = models.preset("small")
    sizes, batches, crop, per_device, frame, bases, repeats = (
      (65,),
      (1, 2),
      65,
      2,
      (90, 160),
      (40,),
      1,
    )
  else:
    config = models.preset("hrnet_w48")
    sizes, batches, crop, per_device, frame, bases, repeats = (
      (473, 713),
      (1, 16, 32),
      713,
      5,
      (1080, 1920),
      (360, 720),
      args.repeats,
    )
  variables = random_variables(config)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
  print(f"roofline: {ROOFLINE}")
  forwards = [
    functools.partial(forward, config, variables, d, s, b, repeats)
    for b in sorted(batches, reverse=True)
    for s in sizes
    for d in (bf16, fp32)
  ]
  trains = [
    functools.partial(train_step, config, d, crop, per_device, repeats, args.trace)
    for d in (fp32, bf16)
  ]
  predictors = [
    functools.partial(predictor, config, variables, d, frame, base, 8, repeats)
    for base in sorted(bases, reverse=True)
    for d in (bf16, fp32)
  ]
  crops = sizes if args.tiny else (473, 713)
  single = [
    functools.partial(batched, config, variables, d, frame, c, 16, repeats)
    for d in (bf16, fp32)
    for c in crops
  ]
  # Most wanted first: the roofline's forward, the train steps, base 720, then the rest.
  items = forwards[:1] + trains + predictors[:2] + single[:2] + forwards[1:]
  items += predictors[2:] + single[2:]
  for item in items:
    if args.only and item.func.__name__ not in args.only:
      continue
    if time.perf_counter() - start > args.budget_s:
      print(f"skipped (past --budget-s {args.budget_s:.0f}): {item.func.__name__} {item.args[2:]}")
      continue
    try:
      print(f"[{time.perf_counter() - start:.0f} s] {item()}", flush=True)
    except Exception as e:  # e.g. out of memory: report it and go on
      print(f"failed: {item.func.__name__} {item.args[2:]}: {type(e).__name__}: {str(e)[:200]}")
  print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
