"""Forward and both gradients of HRNet's 3x3 convolutions, direct against Winograd, per shape.

  python benchmarks/bench_conv.py [--batch 2] [--crop 473] [--rounds 10]

For each branch of a W48 train step at --crop (119^2 x 48 ... 15^2 x 384 at 473), times the
jitted forward + backward of `conv_after_gradient` as the train step differentiates it, once
with the direct convolution (XLA:CPU's, with our kernel gradient) and once with Winograd
products (`models/winograd.py`), alternating, under train.py's XLA options. Prints the median
times, their ratio and the largest relative difference of the results. This is what
`hrnet.WINOGRAD_MIN_CHANNELS` rests on (the forward alone, as inference runs it, ranks the
branches the same way: BENCHMARKS.md, issue 17, eighth pass).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from mseg_jax import models
from mseg_jax.models import hrnet


def timed_conv(x, w, g, min_channels: int):
  """The jitted forward + backward with Winograd from `min_channels` channels."""
  hrnet.WINOGRAD_MIN_CHANNELS = min_channels  # read when the step is traced, below
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

  def step(x, w, g):
    y, vjp = jax.vjp(
      lambda x, w: hrnet.conv_after_gradient(x, w, (1, 1), ((1, 1), (1, 1)), None, None, dn),
      x,
      w,
    )
    return y, *vjp(g)

  return jax.jit(step, compiler_options=models.compiler_options()).lower(x, w, g).compile()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--crop", type=int, default=473)
  parser.add_argument("--rounds", type=int, default=10)
  args = parser.parse_args()
  default = hrnet.WINOGRAD_MIN_CHANNELS
  print(f"device: {jax.devices()[0].device_kind}  batch: {args.batch}  crop: {args.crop}")
  print(f"WINOGRAD_MIN_CHANNELS = {default}")
  print("| branch | direct ms | Winograd ms | ratio | max rel. diff y / dx / dw |")
  print("|---|---|---|---|---|")
  size = -(-args.crop // 4)  # the stem's two stride-2 convolutions
  for branch in range(4):
    c = 48 * 2**branch
    keys = jax.random.split(jax.random.key(branch), 3)
    x = jax.random.normal(keys[0], (args.batch, size, size, c))
    w = jax.random.normal(keys[1], (3, 3, c, c)) * (2 / (9 * c)) ** 0.5
    g = jax.random.normal(keys[2], (args.batch, size, size, c))
    runs = {"direct": timed_conv(x, w, g, 2**31), "winograd": timed_conv(x, w, g, 1)}
    outs = {k: jax.block_until_ready(f(x, w, g)) for k, f in runs.items()}
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
      for k, f in runs.items():
        start = time.perf_counter()
        jax.block_until_ready(f(x, w, g))
        times[k].append(1e3 * (time.perf_counter() - start))
    direct, wino = (statistics.median(times[k]) for k in runs)
    diffs = [
      float(jnp.abs(a - b).max() / jnp.abs(a).max())
      for a, b in zip(outs["direct"], outs["winograd"], strict=True)
    ]
    print(
      f"| {size}^2 x {c} | {direct:.2f} | {wino:.2f} | {wino / direct:.2f} | "
      + " / ".join(f"{d:.1e}" for d in diffs)
      + " |"
    )
    size = -(-size // 2)
  hrnet.WINOGRAD_MIN_CHANNELS = default


if __name__ == "__main__":
  main()
