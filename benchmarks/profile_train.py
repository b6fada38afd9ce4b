"""Where one train step's time goes on CPU: a profile summed by kind of operation.

  python benchmarks/profile_train.py --crop 233 --batch 2 [--dtype float32] [--default-options]
      [--preset pspnet50]

Compiles `train.train_step` for HRNet-W48 (or `--preset`) as train.py does
(`--default-options`: XLA's default options, with YNN fusions), runs one warm-up step, profiles
one step (`jax.profiler`, perfetto trace) and prints the thunk time per kind: convolutions split
into forward / input-gradient / weight-gradient and by runtime (YNN fusion or XLA), transposes,
reductions, other fusions; and XLA's temp buffer size. Shares hold under load; wall times do
not. With train.py's options (YNN off) the Eigen convolutions run asynchronously and their
events hold only the dispatch, so the convolution rows are meaningful with --default-options
only; time a convolution kind alone instead (BENCHMARKS.md, issue 17).
"""

import argparse
import collections
import functools
import glob
import gzip
import json
import re
import tempfile

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mseg_jax import models, taxonomy, train


def classify(hlo: str) -> dict[str, str]:
  """Instruction name -> kind, from the optimized HLO text."""
  bodies = {
    m.group(1): m.group(2)
    for m in re.finditer(r"^%(fused_computation[\.\d]*) .*?\{\n(.*?)\n\}", hlo, re.M | re.S)
  }
  kinds = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = [^\n]*", hlo, re.M):
    name, line = m.group(1), m.group(0)
    called = re.search(r"calls=%(fused_computation[\.\d]*)", line)
    body = bodies.get(called.group(1), "") if called else line
    runtime = "YNN" if "__ynn_fusion" in line else "XLA"
    conv = [x for x in body.split("\n") if " convolution(" in x]
    if conv:
      dims = [int(d) for d in re.search(r"= \w+\[([\d,]*)\]", conv[0]).group(1).split(",")]
      if dims[1] == dims[2] and dims[1] in (1, 3):
        kind = "weight-gradient conv"
      elif "transpose(" in (re.search(r'op_name="([^"]*)"', conv[0]) or ["", ""])[1]:
        kind = "input-gradient conv"
      else:
        kind = "forward conv"
      kinds[name] = f"{kind} ({runtime})"
    elif "transpose" in name.split(".")[0]:
      kinds[name] = "transposes"
    elif " reduce(" in body:
      kinds[name] = f"reductions ({runtime})"
    else:
      kinds[name] = "other"
  return kinds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="hrnet_w48")
  parser.add_argument("--crop", type=int, default=233)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--dtype", choices=sorted(train.DTYPES), default="float32")
  parser.add_argument("--default-options", action="store_true")
  args = parser.parse_args()

  mesh = train.make_mesh()
  jax.set_mesh(mesh)
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  model = models.build(models.preset(args.preset), train.DTYPES[args.dtype])
  optim = ml_collections.ConfigDict(dict(base_lr=0.01, momentum=0.9, weight_decay=1e-4, power=0.9))
  tx, schedule = train.create_optimizer(optim, 600_000)
  luts = taxonomy.stacked_luts(taxonomy.RELABELED_TRAIN_DATASETS)
  options = None if args.default_options else models.compiler_options()
  state = jax.jit(functools.partial(train.init_state, model, tx), compiler_options=options)(
    jax.random.key(0)
  )
  state = jax.device_put(state, replicated)
  rng = np.random.default_rng(0)
  host = {
    "image": rng.integers(0, 256, (args.batch, args.crop, args.crop, 3), np.uint8),
    "label": rng.integers(0, 20, (args.batch, args.crop, args.crop), np.uint8),
    "dataset": np.arange(args.batch, dtype=np.int32) % len(luts),
  }
  batch = train.global_batch(host, data)
  step = jax.jit(
    functools.partial(train.train_step, model=model, luts=luts, tx=tx, schedule=schedule),
    donate_argnums=0,
    out_shardings=replicated,
    compiler_options=options,
  )
  compiled = step.lower(state, batch).compile()
  kinds = classify(compiled.as_text())
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    (path,) = glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz")
    events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  time_us, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kinds:
      time_us[kinds[e["name"]]] += e["dur"]
      count[kinds[e["name"]]] += 1
  total = sum(time_us.values())
  print(
    f"{args.preset} train step, crop {args.crop}, batch {args.batch}, {args.dtype}, "
    f"{'default XLA options' if args.default_options else 'models.compiler_options()'}: "
    f"{total / 1e6:.1f} s of thunk time, XLA temp "
    f"{compiled.memory_analysis().temp_size_in_bytes / 2**30:.2f} GiB"
  )
  for kind, us in time_us.most_common():
    print(f"  {100 * us / total:5.1f}%  {us / 1e6:7.2f} s  {count[kind]:5d}  {kind}")


if __name__ == "__main__":
  main()
