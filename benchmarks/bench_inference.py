"""Frames/s of the official test-time procedure on a 1920x1080 frame.

  python benchmarks/bench_inference.py [--model hrnet_w48] [--settings 360:ss]
      [--estimate 720:ss,1080:ss,360:ms,720:ms,1080:ms] [--crop 713] [--batch-size 1]
      [--dtype float32] [--frames 1] [--checkpoint DIR] [--height 1080 --width 1920]
      [--winograd-min-channels N]
  python benchmarks/bench_inference.py --single-crop N [--crop 473] [--frames 1]

On an accelerator, measure everything: --settings 360:ss,720:ss,1080:ss,360:ms,720:ms,1080:ms
--estimate "" --batch-size 8.

For each base size / scales setting: windows per frame (each runs with its flip), seconds per
frame (median of --frames) and frames/s, after one warm-up frame (compilation). Also the time
of one network call (batch-size windows + flips) with the band work that turns its logits into
summed window probabilities, from which `--estimate` settings are
extrapolated as (network calls per frame) x (time per call) instead of run. Weights are random
unless --checkpoint is given (the speed does not depend on them). For reference, the MSeg
README gives 24.04 / 16.85 / 12.37 fps at crop 473 / 593 / 713 on a Quadro P5000 (its batched
single-scale demo, one window per frame).

After each measured setting the process's peak RSS is printed: run one setting per process for
a clean peak. `--single-crop N` times `single_crop.SingleCropPredictor` instead (the official
batched single-crop mode, crop 473 unless --crop): N frames per call, --frames timed calls after
one warm-up call, frames/s and peak RSS. `benchmarks/bench_torch_hrnet.py --frame` and
`--single-crop` time the official code on the same frames, to alternate with this script.
`--winograd-min-channels` sets `hrnet.WINOGRAD_MIN_CHANNELS` (a huge value turns the CPU's
Winograd convolutions off).
"""

import argparse
import math
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_model import random_variables  # the script's folder is on sys.path

from mseg_jax import inference, models, single_crop


def windows_per_scale(height: int, width: int, base_size: int, scales, crop: int) -> list[int]:
  counts = []
  for scale in scales:
    h, w = inference.scaled_size(height, width, base_size, scale)
    counts.append(len(inference.window_layout(h, w, crop).starts))
  return counts


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_single_crop(model, variables, args, dtype) -> None:
  """Frames/s of SingleCropPredictor with --single-crop frames per call."""
  crop, n = args.crop or 473, args.single_crop
  h, w = single_crop.resized_size(args.height, args.width, crop)
  print(
    f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), model "
    f"{args.checkpoint or args.model}, single crop {crop}, {n} frames (+flips) per call, "
    f"{args.dtype}, frame {args.width}x{args.height} resized to {w}x{h}"
  )
  predictor = single_crop.SingleCropPredictor(model, variables, crop=crop, dtype=dtype)
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (n, args.height, args.width, 3), dtype=np.uint8)
  t0 = time.perf_counter()
  np.asarray(predictor(frames))
  print(f"first call {time.perf_counter() - t0:.1f} s (compile + run)")
  times = []
  for _ in range(args.frames):
    t0 = time.perf_counter()
    np.asarray(predictor(frames))
    times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  print(
    f"median {seconds:.2f} s per call, {n / seconds:.3f} frames/s, "
    f"peak RSS {peak_rss_gib():.2f} GiB"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="hrnet_w48", help="models.preset name")
  parser.add_argument("--checkpoint", help="a model dir instead of random --model weights")
  parser.add_argument("--settings", default="360:ss", help="comma-separated base_size:ss|ms to run")
  parser.add_argument(
    "--estimate",
    default="720:ss,1080:ss,360:ms,720:ms,1080:ms",
    help="settings to extrapolate from the time per network call",
  )
  parser.add_argument("--crop", type=int, help="713, or 473 with --single-crop")
  parser.add_argument("--batch-size", type=int, default=1)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument(
    "--frames", type=int, default=1, help="timed frames per setting (calls with --single-crop)"
  )
  parser.add_argument(
    "--single-crop", type=int, metavar="N", help="time the batched single-crop mode instead"
  )
  parser.add_argument("--height", type=int, default=1080)
  parser.add_argument("--width", type=int, default=1920)
  parser.add_argument(
    "--winograd-min-channels", type=int, default=models.hrnet.WINOGRAD_MIN_CHANNELS
  )
  args = parser.parse_args()
  models.hrnet.WINOGRAD_MIN_CHANNELS = args.winograd_min_channels

  if args.checkpoint:
    model, variables = models.load_checkpoint(args.checkpoint)
  else:
    config = models.preset(args.model)
    model, variables = models.HRNet(config=config), random_variables(config)
  variables = jax.device_put(variables)
  dtype = jnp.dtype(args.dtype)
  if args.single_crop:
    bench_single_crop(model, variables, args, dtype)
    return
  args.crop = args.crop or 713
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
  print(
    f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), model "
    f"{args.checkpoint or args.model}, crop {args.crop}, batch {args.batch_size} windows "
    f"(+flips), {args.dtype}, frame {args.width}x{args.height}"
  )

  predictor = inference.Predictor(
    model, variables, crop=args.crop, batch_size=args.batch_size, dtype=dtype
  )
  crops = jnp.zeros((args.batch_size, args.crop, args.crop, 3), jnp.float32)
  layout = inference.window_layout(args.crop, args.crop, args.crop)
  starts, valid = jnp.zeros((args.batch_size, 2), jnp.int32), jnp.ones(args.batch_size, bool)

  def network_call() -> jax.Array:
    """The windows' logits, then their band work (upsample, softmax, flip average, sum)."""
    logits = predictor.logits(predictor.variables, crops)
    total = jnp.zeros((args.crop, args.crop, logits.shape[-1]), jnp.float32)
    return inference.add_windows(total, logits, starts, valid, None, layout)

  t0 = time.perf_counter()
  jax.block_until_ready(network_call())
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(network_call())
    times.append(time.perf_counter() - t0)
  per_call = min(times)
  print(
    f"network call ({args.batch_size} windows + flips, with their band work): first "
    f"{compile_s:.1f} s (compile + run), then {per_call:.3f} s"
  )

  print("| base size | scales | windows/frame | s/frame | frames/s | measured | peak RSS |")
  print("|---|---|---|---|---|---|---|")
  for spec, measured in [(s, True) for s in args.settings.split(",") if s] + [
    (s, False) for s in args.estimate.split(",") if s
  ]:
    base, scales_name = spec.split(":")
    scales = inference.scales_from_name(scales_name)
    counts = windows_per_scale(args.height, args.width, int(base), scales, args.crop)
    windows = sum(counts)
    if measured:
      predictor = inference.Predictor(
        model,
        variables,
        base_size=int(base),
        scales=scales,
        crop=args.crop,
        batch_size=args.batch_size,
        dtype=dtype,
      )
      np.asarray(predictor(frame))  # warm-up: compiles the per-size functions
      times = []
      for _ in range(args.frames):
        t0 = time.perf_counter()
        np.asarray(predictor(frame))
        times.append(time.perf_counter() - t0)
      seconds = statistics.median(times)
    else:
      seconds = sum(math.ceil(n / args.batch_size) for n in counts) * per_call
    print(
      f"| {base} | {scales_name} | {windows} | {seconds:.2f} | {1 / seconds:.3f} | "
      f"{'yes' if measured else 'estimate'} | "
      f"{f'{peak_rss_gib():.2f} GiB' if measured else '-'} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
