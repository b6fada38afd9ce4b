"""The official PyTorch HRNet-W48's forward time, for a side-by-side comparison with ours.

  pip install torch==2.13.0   # CPU build; torch is not a dependency of mseg-jax
  python benchmarks/bench_torch_hrnet.py --sizes 473 713 --threads 2
  python benchmarks/bench_model.py --sizes 473 713        # ours, same machine, alternated
  python benchmarks/bench_torch_hrnet.py --train --sizes 473 --batch 2   # training step
  python benchmarks/bench_train.py --crop 473 --batch 2                   # ours, alternated
  python benchmarks/bench_torch_hrnet.py --frame --base-sizes 360          # one 1080p frame
  python benchmarks/bench_inference.py --settings 360:ss --estimate ""     # ours, alternated
  python benchmarks/bench_torch_hrnet.py --single-crop 2                   # batched, crop 473
  python benchmarks/bench_inference.py --single-crop 2                     # ours, alternated
  python benchmarks/bench_torch_hrnet.py --cuda --train --sizes 713 --batch 5  # on a GPU

CPU timings on a shared machine drift by 10-30% within minutes, so compare the two scripts
run alternately, not against numbers taken at another time. The network is the official
`seg_hrnet.py` architecture as ../shared/golden/README.md specifies it (eval mode, BN kept
as a module, random weights: time does not depend on them); its parameter count is checked
against the released model's 65,985,554. `--train` times the official training step instead:
train-mode forward (BN batch statistics), cross entropy with ignore 255 at full resolution,
backward and SGD (momentum 0.9, weight decay 1e-4), and prints the process's peak RSS (run one
mode per process for a clean peak). `--cuda` runs the forward (batches --forward-batches) and the
training step on the GPU, fp32 as the official recipes (apex O0) with PyTorch's defaults (TF32
convolutions) and cudnn.benchmark, and prints the peak memory PyTorch allocated on the device.

`--frame` times the official `InferenceTask` single-scale procedure on a random uint8
--width x --height frame, per base size: short side round(base size) (cv2 INTER_LINEAR), mean
colour padding to the crop (713), sliding windows at stride ceil(2/3 crop), one window and its
flip per network call (batch_size_val 1), softmax, flip average, window average, unpad,
cv2.resize of the (H, W, 194) probabilities to the frame, argmax. `--single-crop N` times the
official `BatchedInferenceTask` on N frames per call (crop 473): each frame resized to fit the
crop (truncating ResizeShort to floor(short * crop / long)), normalised, zero-padded, N frames
and their flips in one call, softmax, flip average, unpad, F.interpolate (align_corners=True)
to the frame size, argmax. Both print seconds (median of --repeats after one warm-up) and the
peak RSS: run one base size or mode per process for a clean peak.
"""

import argparse
import math
import resource
import statistics
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (48, 96, 192, 384)
RELEASED_PARAMS = 65_985_554
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
CPU = torch.device("cpu")


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


def sync(device: torch.device) -> None:
  """Waits for the device's queued work (timings on a GPU are otherwise launch times)."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_train_step(
  model: nn.Module,
  size: int,
  batch: int,
  repeats: int,
  loss_weights=(1.0,),
  device: torch.device = CPU,
) -> list[float]:
  """Seconds per official SGD step on random images and labels (ignore 255 included). A model
  with several outputs in training (PSPNet: main, aux) is trained on their losses weighed by
  `loss_weights`."""
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  criterion = nn.CrossEntropyLoss(ignore_index=255)
  x = torch.randn(batch, 3, size, size, device=device)
  target = torch.randint(0, 194, (batch, size, size), device=device)
  target[:, :8] = 255
  times = []
  for i in range(repeats + 1):  # the first step warms up
    start = time.perf_counter()
    outputs = model(x)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum(w * criterion(y, target) for w, y in zip(loss_weights, outputs, strict=True))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    sync(device)
    if i:
      times.append(time.perf_counter() - start)
  return times


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_memory(device: torch.device) -> str:
  """The process's peak RSS, and on a GPU the peak memory PyTorch allocated there."""
  text = f"peak RSS {peak_rss_gib():.2f} GiB"
  if device.type == "cuda":
    text += f", device peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
  return text


def print_train_steps(
  model: nn.Module,
  args: argparse.Namespace,
  loss_weights=(1.0,),
  device: torch.device = CPU,
) -> None:
  """One line per --sizes: the median and min of `time_train_step`, and the peak memory."""
  for size in args.sizes:
    times = time_train_step(model, size, args.batch, args.repeats, loss_weights, device)
    print(
      f"{size}x{size}: median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
      f"{args.batch / statistics.median(times):.1f} img/s, {peak_memory(device)}"
    )


def window_starts(size: int, crop: int) -> list[int]:
  """scale_process_cuda's window offsets on one padded axis: the last one ends at the border."""
  stride = math.ceil(crop * 2 / 3)
  grid = math.ceil((size - crop) / stride) + 1
  return [min(i * stride + crop, size) - crop for i in range(grid)]


def scaled_size(height: int, width: int, base_size: int) -> tuple[int, int]:
  """resize_by_scaled_short_side at scale 1.0: Python round (half to even)."""
  short = round(1.0 * base_size)
  if height > width:
    return round(short / width * height), short
  return short, round(short / height * width)


def net_process(model: nn.Module, crop: np.ndarray) -> torch.Tensor:
  """InferenceTask.net_process: a crop and its flip in one call -> (194, crop, crop) probs."""
  x = torch.from_numpy(crop.transpose(2, 0, 1)).float()
  for t, m, s in zip(x, MEAN, STD, strict=True):  # normalize_img
    t.sub_(m).div_(s)
  x = x.unsqueeze(0)
  x = torch.cat([x, x.flip(3)], 0)
  output = model(x)  # the model upsamples its logits to the crop (align_corners=True)
  output = torch.softmax(output, 1)
  return (output[0] + output[1].flip(2)) / 2


def frame_labels(model: nn.Module, frame: np.ndarray, base_size: int, crop: int) -> np.ndarray:
  """InferenceTask.execute_on_img, single scale, on CPU: uint8 RGB (H, W, 3) -> uint8 labels."""
  image = np.float32(frame)  # imread_rgb
  h, w = image.shape[:2]
  new_h, new_w = scaled_size(h, w, base_size)
  image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
  top, left = pad_h // 2, pad_w // 2
  if pad_h > 0 or pad_w > 0:  # pad_to_crop_sz
    image = cv2.copyMakeBorder(
      image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=MEAN
    )
  padded_h, padded_w = image.shape[:2]
  prediction_crop = torch.zeros((model.last_layer[-1].out_channels, padded_h, padded_w))
  count_crop = torch.zeros((padded_h, padded_w))
  for y in window_starts(padded_h, crop):
    for x in window_starts(padded_w, crop):
      count_crop[y : y + crop, x : x + crop] += 1
      prediction_crop[:, y : y + crop, x : x + crop] += net_process(
        model, image[y : y + crop, x : x + crop].copy()
      )
  prediction_crop /= count_crop.unsqueeze(0)
  prediction_crop = prediction_crop[:, top : top + new_h, left : left + new_w]
  prediction_crop = prediction_crop.permute(1, 2, 0).data.cpu().numpy()
  prediction = torch.Tensor(cv2.resize(prediction_crop, (w, h), interpolation=cv2.INTER_LINEAR))
  prediction /= 1  # len(scales)
  return np.uint8(torch.argmax(prediction, axis=2).numpy())


def resized_size(height: int, width: int, crop: int) -> tuple[int, int]:
  """The batched loader's ResizeShort(determine_max_possible_base_size): truncating."""
  size = math.floor(min(height, width) * crop / max(height, width))
  if height <= width:
    return size, int(width * (size / float(height)))
  return int(height * (size / float(width))), size


def single_crop_labels(model: nn.Module, frames: np.ndarray, crop: int) -> np.ndarray:
  """BatchedInferenceTask on uint8 RGB frames (N, H, W, 3) after its loader -> (N, H, W) uint8."""
  n, height, width = frames.shape[:3]
  h, w = resized_size(height, width, crop)
  batch = []
  for frame in frames:  # the loader: ResizeShort, ToTensor, Normalize
    image = cv2.resize(np.float32(frame), (w, h), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(image.transpose((2, 0, 1)))
    for c, m, s in zip(t, MEAN, STD, strict=True):
      c.sub_(m).div_(s)
    batch.append(t)
  batch = torch.stack(batch)
  pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
  top, left = pad_h // 2, pad_w // 2
  padded = torch.zeros((n, 3, crop, crop))  # pad_to_crop_sz_batched
  padded[:, :, top : top + h, left : left + w] = batch
  x = torch.cat([padded, padded.flip(3)], 0)
  output = torch.softmax(model(x), 1)
  output = (output[:n] + output[n:].flip(3)) / 2  # flipped back, as mseg_jax.single_crop
  output = output[:, :, top : top + h, left : left + w]
  output = F.interpolate(output, size=(height, width), mode="bilinear", align_corners=True)
  return np.uint8(torch.argmax(output, axis=1).numpy())


def median_seconds(repeats: int, fn, *args) -> float:
  """Median wall time of `repeats` calls fn(*args) after one warm-up call."""
  fn(*args)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[473, 713])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--train", action="store_true", help="time the training step")
  parser.add_argument("--batch", type=int, default=2, help="training batch (--train)")
  parser.add_argument("--cuda", action="store_true", help="forward and --train on the GPU")
  parser.add_argument(
    "--forward-batches", type=int, nargs="+", default=[1], help="forward batch sizes"
  )
  parser.add_argument("--frame", action="store_true", help="time InferenceTask on one frame")
  parser.add_argument("--base-sizes", type=int, nargs="+", default=[360, 720], help="--frame")
  parser.add_argument(
    "--single-crop", type=int, metavar="N", help="time BatchedInferenceTask, N frames per call"
  )
  parser.add_argument("--crop", type=int, help="--frame: 713, --single-crop: 473")
  parser.add_argument(
    "--height", type=int, default=1080, help="frame height (--frame, --single-crop)"
  )
  parser.add_argument(
    "--width", type=int, default=1920, help="frame width (--frame, --single-crop)"
  )
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  device = torch.device("cuda" if args.cuda else "cpu")
  torch.backends.cudnn.benchmark = True
  model = HRNet().eval()
  params = sum(p.numel() for p in model.parameters())
  if params != RELEASED_PARAMS:
    raise SystemExit(f"{params} parameters, the released model has {RELEASED_PARAMS}")
  rng = np.random.default_rng(0)
  if args.cuda and (args.frame or args.single_crop):
    raise SystemExit("--frame and --single-crop run on the CPU")
  where = torch.cuda.get_device_name(device) if args.cuda else f"{args.threads} threads"
  model.to(device)
  if args.frame:
    crop = args.crop or 713
    frame = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    print(
      f"torch {torch.__version__}, {args.threads} threads, HRNet-W48, fp32, InferenceTask "
      f"single scale, crop {crop}, one window + flip per call, frame {args.width}x{args.height}"
    )
    for base_size in args.base_sizes:
      h, w = scaled_size(args.height, args.width, base_size)
      windows = len(window_starts(max(h, crop), crop)) * len(window_starts(max(w, crop), crop))
      with torch.no_grad():
        seconds = median_seconds(args.repeats, frame_labels, model, frame, base_size, crop)
      print(
        f"base {base_size} ({w}x{h}): {windows} windows/frame, median {seconds:.2f} s/frame, "
        f"peak RSS {peak_rss_gib():.2f} GiB",
        flush=True,
      )
    return
  if args.single_crop:
    crop, n = args.crop or 473, args.single_crop
    frames = rng.integers(0, 256, (n, args.height, args.width, 3), dtype=np.uint8)
    h, w = resized_size(args.height, args.width, crop)
    print(
      f"torch {torch.__version__}, {args.threads} threads, HRNet-W48, fp32, "
      f"BatchedInferenceTask, crop {crop}, {n} frames (+flips) per call, "
      f"frame {args.width}x{args.height} resized to {w}x{h}"
    )
    with torch.no_grad():
      seconds = median_seconds(args.repeats, single_crop_labels, model, frames, crop)
    print(
      f"median {seconds:.2f} s per call, {n / seconds:.3f} frames/s, "
      f"peak RSS {peak_rss_gib():.2f} GiB"
    )
    return
  if args.train:
    print(
      f"torch {torch.__version__}, {where}, HRNet-W48 ({params:,} params), "
      f"fp32, training step (forward, loss, backward, SGD), batch {args.batch}"
    )
    print_train_steps(model, args, device=device)
    return
  print(f"torch {torch.__version__}, {where}, HRNet-W48 ({params:,} params), fp32, eval, no_grad")
  for size in args.sizes:
    for batch in args.forward_batches:
      x = torch.randn(batch, 3, size, size, device=device)
      with torch.no_grad():
        model(x)
        sync(device)
        times = []
        for _ in range(args.repeats):
          start = time.perf_counter()
          model(x)
          sync(device)
          times.append(time.perf_counter() - start)
      median = statistics.median(times)
      print(
        f"{size}x{size} batch {batch}: median {median:.4f} s, min {min(times):.4f} s, "
        f"{batch / median:.1f} img/s, {peak_memory(device)}"
      )


if __name__ == "__main__":
  main()
