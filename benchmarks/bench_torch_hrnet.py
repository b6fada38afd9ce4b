"""The official PyTorch HRNet-W48's forward time, for a side-by-side comparison with ours.

  pip install torch==2.13.0   # CPU build; torch is not a dependency of mseg-jax
  python benchmarks/bench_torch_hrnet.py --sizes 473 713 --threads 2
  python benchmarks/bench_model.py --sizes 473 713        # ours, same machine, alternated
  python benchmarks/bench_torch_hrnet.py --train --sizes 473 --batch 2   # training step
  python benchmarks/bench_train.py --crop 473 --batch 2                   # ours, alternated

CPU timings on a shared machine drift by 10-30% within minutes, so compare the two scripts
run alternately, not against numbers taken at another time. The network is the official
`seg_hrnet.py` architecture as ../shared/golden/README.md specifies it (eval mode, BN kept
as a module, random weights: time does not depend on them); its parameter count is checked
against the released model's 65,985,554. `--train` times the official training step instead:
train-mode forward (BN batch statistics), cross entropy with ignore 255 at full resolution,
backward and SGD (momentum 0.9, weight decay 1e-4), and prints the process's peak RSS (run one
mode per process for a clean peak).
"""

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (48, 96, 192, 384)
RELEASED_PARAMS = 65_985_554


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True):
  layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Bottleneck(nn.Module):
  def __init__(self, cin: int, planes: int):
    super().__init__()
    self.main = nn.Sequential(
      conv_bn(cin, planes, 1), conv_bn(planes, planes), conv_bn(planes, 4 * planes, 1, relu=False)
    )
    self.down = conv_bn(cin, 4 * planes, 1, relu=False) if cin != 4 * planes else nn.Identity()

  def forward(self, x):
    return F.relu(self.main(x) + self.down(x))


class BasicBlock(nn.Module):
  def __init__(self, width: int):
    super().__init__()
    self.main = nn.Sequential(conv_bn(width, width), conv_bn(width, width, relu=False))

  def forward(self, x):
    return F.relu(self.main(x) + x)


def fuse_layer(widths, i: int, j: int) -> nn.Module:
  if j > i:
    return conv_bn(widths[j], widths[i], 1, relu=False)
  if j == i:
    return nn.Identity()
  steps = [conv_bn(widths[j], widths[j], 3, 2) for _ in range(i - j - 1)]
  return nn.Sequential(*steps, conv_bn(widths[j], widths[i], 3, 2, relu=False))


class HighResolutionModule(nn.Module):
  def __init__(self, widths):
    super().__init__()
    self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(w) for _ in range(4)]) for w in widths)
    self.fuse = nn.ModuleList(
      nn.ModuleList(fuse_layer(widths, i, j) for j in range(len(widths)))
      for i in range(len(widths))
    )

  def forward(self, xs):
    xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
    out = []
    for i, row in enumerate(self.fuse):
      y = 0
      for j, layer in enumerate(row):
        z = layer(xs[j])
        if j > i:
          z = F.interpolate(z, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
        y = y + z
      out.append(F.relu(y))
    return out


class HRNet(nn.Module):
  def __init__(self, num_classes: int = 194):
    super().__init__()
    w = WIDTHS
    self.stem = nn.Sequential(conv_bn(3, 64, 3, 2), conv_bn(64, 64, 3, 2))
    self.layer1 = nn.Sequential(Bottleneck(64, 64), *[Bottleneck(256, 64) for _ in range(3)])
    self.transition1 = nn.ModuleList([conv_bn(256, w[0]), conv_bn(256, w[1], 3, 2)])
    self.stage2 = nn.Sequential(HighResolutionModule(w[:2]))
    self.transition2 = conv_bn(w[1], w[2], 3, 2)
    self.stage3 = nn.Sequential(*[HighResolutionModule(w[:3]) for _ in range(4)])
    self.transition3 = conv_bn(w[2], w[3], 3, 2)
    self.stage4 = nn.Sequential(*[HighResolutionModule(w) for _ in range(3)])
    c = sum(w)
    self.last_layer = nn.Sequential(
      nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, num_classes, 1)
    )

  def forward(self, x):
    size = x.shape[-2:]
    x = self.layer1(self.stem(x))
    xs = self.stage2([t(x) for t in self.transition1])
    xs = self.stage3(xs + [self.transition2(xs[-1])])
    xs = self.stage4(xs + [self.transition3(xs[-1])])
    quarter = xs[0].shape[-2:]
    x = torch.cat([xs[0]] + [F.interpolate(y, size=quarter, mode="bilinear") for y in xs[1:]], 1)
    return F.interpolate(self.last_layer(x), size=size, mode="bilinear", align_corners=True)


def time_train_step(model: nn.Module, size: int, batch: int, repeats: int) -> list[float]:
  """Seconds per official SGD step on random images and labels (ignore 255 included)."""
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  criterion = nn.CrossEntropyLoss(ignore_index=255)
  x = torch.randn(batch, 3, size, size)
  target = torch.randint(0, 194, (batch, size, size))
  target[:, :8] = 255
  times = []
  for i in range(repeats + 1):  # the first step warms up
    start = time.perf_counter()
    loss = criterion(model(x), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if i:
      times.append(time.perf_counter() - start)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[473, 713])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--train", action="store_true", help="time the training step")
  parser.add_argument("--batch", type=int, default=2, help="training batch (--train)")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  model = HRNet().eval()
  params = sum(p.numel() for p in model.parameters())
  if params != RELEASED_PARAMS:
    raise SystemExit(f"{params} parameters, the released model has {RELEASED_PARAMS}")
  if args.train:
    print(
      f"torch {torch.__version__}, {args.threads} threads, HRNet-W48 ({params:,} params), "
      f"fp32, training step (forward, loss, backward, SGD), batch {args.batch}"
    )
    for size in args.sizes:
      times = time_train_step(model, size, args.batch, args.repeats)
      print(
        f"{size}x{size}: median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
      )
    return
  print(
    f"torch {torch.__version__}, {args.threads} threads, HRNet-W48 ({params:,} params), "
    "fp32, batch 1, eval, no_grad"
  )
  for size in args.sizes:
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
      model(x)
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    print(f"{size}x{size}: median {statistics.median(times):.3f} s, min {min(times):.3f} s")


if __name__ == "__main__":
  main()
