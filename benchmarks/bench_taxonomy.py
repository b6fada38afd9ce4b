"""Times the jitted taxonomy ops: label remap (8x713x713 uint8) and projection (2x713x713x194).

python benchmarks/bench_taxonomy.py [--repeats 20]
"""

import argparse
import time

import jax
import numpy as np

from mseg_jax import taxonomy as tx


def timeit(fn, repeats: int) -> tuple[float, float]:
  """(min, median) milliseconds of fn() after one warm-up (compile) call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(1e3 * (time.perf_counter() - start))
  return min(times), float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(
    f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.repeats} repeats "
    "(min / median ms)"
  )

  datasets = tx.UNRELABELED_TRAIN_DATASETS
  labels = jax.device_put(rng.integers(0, 256, (8, 713, 713), dtype=np.uint8))
  lut = jax.device_put(tx.to_universal_lut("ade20k-150"))
  stacked = jax.device_put(tx.stacked_luts(datasets))
  index = jax.device_put(np.arange(8) % len(datasets))
  labels_np, lut_np = np.asarray(labels), np.asarray(lut)
  cases = {
    "remap 8x713x713 uint8, one LUT": lambda: tx.remap_labels(labels, lut),
    "remap 8x713x713 uint8, stacked LUTs + dataset_index": lambda: tx.remap_labels(
      labels, stacked, index
    ),
    "numpy lut[labels] (reference)": lambda: lut_np[labels_np],
  }
  probs = rng.random((2, 713, 713, 194), dtype=np.float32)
  probs = jax.device_put(probs / probs.sum(-1, keepdims=True))
  for d in ("camvid-11", "pascal-context-60"):
    matrix = jax.device_put(tx.projection_matrix(d))
    cases[f"project 2x713x713x194 -> {matrix.shape[1]} ({d})"] = lambda m=matrix: tx.project_probs(
      probs, m
    )
  for name, fn in cases.items():
    best, median = timeit(fn, args.repeats)
    print(f"{name:55s} {best:8.1f} / {median:8.1f}")


if __name__ == "__main__":
  main()
