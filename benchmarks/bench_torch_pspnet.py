"""The official PyTorch PSPNet-50's forward time, for a side-by-side comparison with ours.

  pip install torch==2.13.0   # CPU build; torch is not a dependency of mseg-jax
  python benchmarks/bench_torch_pspnet.py --sizes 473 713 --threads 2
  python benchmarks/bench_model.py --preset pspnet50 --sizes 473 713   # ours, alternated
  python benchmarks/bench_torch_pspnet.py --train --sizes 473 --batch 2          # training step
  python benchmarks/bench_train.py --preset pspnet50 --crop 473 --batch 2        # ours, alternated

CPU timings on a shared machine drift by 10-30% within minutes, so compare the two scripts
run alternately, not against numbers taken at another time. The network is the official
`pspnet.py` + `resnet.py` architecture as ../shared/golden/README.md specifies it (eval mode,
BN kept as a module, random weights: time does not depend on them; the aux head exists but
the eval forward skips it), with the official state_dict keys; its parameter count is checked
against the official PSPNet-50's 49,214,788. `--train` times the official training step
instead: train-mode forward (BN batch statistics, Dropout2d) with the aux head, cross entropy
with ignore 255 at full resolution on both outputs (main + 0.4 x aux), backward and SGD
(momentum 0.9, weight decay 1e-4), and prints the process's peak RSS (run one mode per process
for a clean peak).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_torch_hrnet import print_train_steps
from torch import nn

OFFICIAL_PARAMS = 49_214_788
BLOCKS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
  def __init__(self, cin: int, planes: int, stride: int, dilation: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.downsample = None
    if stride != 1 or cin != 4 * planes:
      self.downsample = nn.Sequential(
        nn.Conv2d(cin, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes)
      )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
  conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
  return [conv, nn.BatchNorm2d(cout), nn.ReLU()]


def head(cin: int, width: int, num_classes: int) -> nn.Sequential:
  return nn.Sequential(
    *conv_bn_relu(cin, width), nn.Dropout2d(0.1), nn.Conv2d(width, num_classes, 1)
  )


class PSPNet(nn.Module):
  def __init__(self, num_classes: int = 194, bins=(1, 2, 3, 6)):
    super().__init__()
    self.layer0 = nn.Sequential(
      *conv_bn_relu(3, 64, stride=2),
      *conv_bn_relu(64, 64),
      *conv_bn_relu(64, 128),
      nn.MaxPool2d(3, 2, 1),
    )
    cin = 128
    strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
    for k, num in enumerate(BLOCKS):
      planes = 64 * 2**k
      blocks = []
      for b in range(num):
        blocks.append(Bottleneck(cin, planes, strides[k] if b == 0 else 1, dilations[k]))
        cin = 4 * planes
      setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
    self.ppm = nn.Module()
    self.ppm.features = nn.ModuleList(
      nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_relu(2048, 2048 // len(bins), 1))
      for b in bins
    )
    self.cls = head(4096, 512, num_classes)
    self.aux = head(1024, 256, num_classes)

  def forward(self, x):
    size = x.shape[-2:]
    assert (size[0] - 1) % 8 == 0 and (size[1] - 1) % 8 == 0
    layer3 = self.layer3(self.layer2(self.layer1(self.layer0(x))))
    x = self.layer4(layer3)
    eighth = x.shape[-2:]
    pooled = [
      F.interpolate(f(x), eighth, mode="bilinear", align_corners=True) for f in self.ppm.features
    ]
    x = F.interpolate(
      self.cls(torch.cat([x, *pooled], 1)), size, mode="bilinear", align_corners=True
    )
    if not self.training:
      return x
    return x, F.interpolate(self.aux(layer3), size, mode="bilinear", align_corners=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[473, 713])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--train", action="store_true", help="time the training step")
  parser.add_argument("--batch", type=int, default=2, help="training batch (--train)")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  model = PSPNet().eval()
  params = sum(p.numel() for p in model.parameters())
  if params != OFFICIAL_PARAMS:
    raise SystemExit(f"{params} parameters, the official PSPNet-50 has {OFFICIAL_PARAMS}")
  if args.train:
    print(
      f"torch {torch.__version__}, {args.threads} threads, PSPNet-50 ({params:,} params), "
      f"fp32, training step (forward, main + aux loss, backward, SGD), batch {args.batch}"
    )
    print_train_steps(model, args, loss_weights=(1.0, 0.4))
    return
  print(
    f"torch {torch.__version__}, {args.threads} threads, PSPNet-50 ({params:,} params), "
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
