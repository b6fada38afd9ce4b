"""PSPNet with a deep-stem dilated ResNet (the official MSeg `pspnet.py` + `resnet.py`), NHWC.

Every convolution and BatchNorm is a direct child of `PSPNet`, named by its PyTorch module path
("layer0.3", "layer3.0.downsample.1", "ppm.features.2.1", "cls.4", "aux.1"), so the variables
mirror the official state_dict one to one (see `convert.py`). The aux head's variables always
exist, as its keys do in every official checkpoint.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mseg_jax.models.hrnet import BatchNorm, _torch_bias_init, backend_conv, materialize
from mseg_jax.models.resize import resize_bilinear

# layers -> Bottleneck blocks in layer1..layer4 (torchvision / official resnet.py)
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
LAYER_PLANES = (64, 128, 256, 512)
EXPANSION = 4
PPM_IN = 2048
CLS_WIDTH = 512
AUX_IN, AUX_WIDTH = 1024, 256
OUTPUT_STRIDE = 8
# torch BatchNorm2d's default momentum 0.1 (PSPNet passes none), Flax-style.
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class PSPNetConfig:
  """Architecture of a PSPNet: ResNet-`layers` backbone, pyramid pooling over `bins`.

  `dropout` is the Dropout2d rate before the last conv of cls and aux (training only);
  `aux_weight` weighs the aux head's loss in training (the official `aux_weight`).
  """

  num_classes: int = 194
  layers: int = 50
  bins: tuple[int, ...] = (1, 2, 3, 6)
  dropout: float = 0.1
  aux_weight: float = 0.4

  def __post_init__(self):
    if self.layers not in RESNET_BLOCKS:
      raise ValueError(f"PSPNet layers must be one of {sorted(RESNET_BLOCKS)}: {self}")
    if not self.bins or PPM_IN % len(self.bins) or min(self.bins) < 1:
      raise ValueError(f"PSPNet bins must be positive and their count divide {PPM_IN}: {self}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "PSPNetConfig":
    return cls(
      num_classes=int(d["num_classes"]),
      layers=int(d["layers"]),
      bins=tuple(int(b) for b in d["bins"]),
      dropout=float(d["dropout"]),
      aux_weight=float(d["aux_weight"]),
    )


def preset(name: str, num_classes: int = 194) -> PSPNetConfig:
  """ "pspnet50", "pspnet101" or "pspnet152", with the official bins, dropout and aux weight."""
  layers = name.removeprefix("pspnet")
  if not layers.isdigit() or int(layers) not in RESNET_BLOCKS:
    raise ValueError(f"unknown PSPNet preset {name!r}; use pspnet50, pspnet101 or pspnet152")
  return PSPNetConfig(num_classes=num_classes, layers=int(layers))


def adaptive_avg_pool(x: jnp.ndarray, bins: int) -> jnp.ndarray:
  """torch AdaptiveAvgPool2d(bins) of NHWC `x`: cell i averages [floor(i n/b), ceil((i+1) n/b))."""

  def matrix(n: int) -> np.ndarray:
    m = np.zeros((bins, n), np.float32)
    for i in range(bins):
      start, end = (i * n) // bins, -((-(i + 1) * n) // bins)
      m[i, start:end] = 1 / (end - start)
    return m

  _, h, w, _ = x.shape
  mh, mw = (jnp.asarray(matrix(n), x.dtype) for n in (h, w))
  return jnp.einsum("ih,nhwc,jw->nijc", mh, x, mw)


class PSPNet(nn.Module):
  """PSPNet segmentation network; `__call__` returns fp32 logits (N, H, W, num_classes).

  Input: normalized NHWC images with (H-1) % 8 == 0 and (W-1) % 8 == 0, as the official forward
  asserts (crops 473, 593, 713). `return_aux=True` also returns the aux head's logits (on
  layer3, upsampled the same way); training uses them with weight `config.aux_weight`. Training
  with dropout > 0 needs a "dropout" rng, and a batch of at least 2 (the bin-1 PPM BatchNorm).
  Params are fp32; `dtype` is the compute dtype. In training, `mask` (N,) leaves the rows it
  marks False (padding) out of every BatchNorm's statistics. Activations are sown into
  "intermediates" (layer0_out .. layer4_out, ppm_branch{b}_pooled, cls_features, logits_eighth,
  aux_features, aux_eighth).
  """

  config: PSPNetConfig
  dtype: Any = jnp.float32
  bn_folded: bool = False  # inference-only variant made by fold_batch_norm

  def _conv(self, x, name: str, features: int, kernel: int, stride=1, dilation=1, bias=False):
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=[(pad, pad)] * 2,
      kernel_dilation=(dilation, dilation),
      use_bias=bias,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
      bias_init=_torch_bias_init(x.shape[-1] * kernel * kernel),
      conv_general_dilated=backend_conv(),
      name=name,
    )(x)

  def _conv_bn(self, x, conv: str, bn: str, features: int, kernel: int, train: bool, mask, **kw):
    """Conv then BatchNorm (momentum 0.1); one conv with bias when the BN is folded into it."""
    if self.bn_folded:
      if train:
        raise ValueError("PSPNet with bn_folded=True is inference-only (use train=False)")
      return self._conv(x, conv, features, kernel, bias=True, **kw)
    x = self._conv(x, conv, features, kernel, **kw)
    return BatchNorm(momentum=BN_MOMENTUM, dtype=self.dtype, name=bn)(x, train, mask)

  def _bottleneck(self, x, name: str, planes: int, stride: int, dilation: int, train: bool, mask):
    """The stride and dilation sit on conv2 (3x3); block 0 of a layer has the downsample."""
    width = planes * EXPANSION
    out = nn.relu(self._conv_bn(x, f"{name}.conv1", f"{name}.bn1", planes, 1, train, mask))
    out = nn.relu(
      self._conv_bn(
        out,
        f"{name}.conv2",
        f"{name}.bn2",
        planes,
        3,
        train,
        mask,
        stride=stride,
        dilation=dilation,
      )
    )
    out = self._conv_bn(out, f"{name}.conv3", f"{name}.bn3", width, 1, train, mask)
    if stride != 1 or x.shape[-1] != width:
      x = self._conv_bn(
        x, f"{name}.downsample.0", f"{name}.downsample.1", width, 1, train, mask, stride=stride
      )
    return materialize(nn.relu(out + x))

  def _head(self, x, name: str, width: int, train: bool, mask):
    """Sequential(conv3x3, BN, ReLU, Dropout2d, conv1x1 with bias) -> logits at 1/8."""
    x = nn.relu(self._conv_bn(x, f"{name}.0", f"{name}.1", width, 3, train, mask))
    self.sow("intermediates", f"{name}_features", x)
    x = nn.Dropout(self.config.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
    return self._conv(x, f"{name}.4", self.config.num_classes, 1, bias=True).astype(jnp.float32)

  @nn.compact
  def __call__(
    self,
    x: jnp.ndarray,
    train: bool = False,
    return_aux: bool = False,
    mask: jnp.ndarray | None = None,
  ):
    cfg = self.config
    n, h, w, _ = x.shape
    if (h - 1) % OUTPUT_STRIDE or (w - 1) % OUTPUT_STRIDE:
      raise ValueError(
        f"PSPNet needs (H-1) % 8 == 0 and (W-1) % 8 == 0 (e.g. crops 473, 593, 713), got {h}x{w}"
      )
    if train and n < 2:
      raise ValueError("PSPNet training needs a batch of at least 2 (the bin-1 PPM BatchNorm)")
    x = x.astype(self.dtype)
    for i, (features, stride) in enumerate(((64, 2), (64, 1), (128, 1))):
      conv, bn = f"layer0.{3 * i}", f"layer0.{3 * i + 1}"
      x = nn.relu(self._conv_bn(x, conv, bn, features, 3, train, mask, stride=stride))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    self.sow("intermediates", "layer0_out", x)
    # layer3 and layer4: every conv2 dilated 2 and 4, stride 1 (output stride 8)
    strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
    for k, num in enumerate(RESNET_BLOCKS[cfg.layers]):
      for b in range(num):
        stride = strides[k] if b == 0 else 1
        x = self._bottleneck(
          x, f"layer{k + 1}.{b}", LAYER_PLANES[k], stride, dilations[k], train, mask
        )
      self.sow("intermediates", f"layer{k + 1}_out", x)
      if k == 2:
        layer3 = x

    size = x.shape[1:3]
    branches = [x]
    reduction = PPM_IN // len(cfg.bins)
    for i, b in enumerate(cfg.bins):
      name = f"ppm.features.{i}"
      y = adaptive_avg_pool(x, b)
      y = nn.relu(self._conv_bn(y, f"{name}.1", f"{name}.2", reduction, 1, train, mask))
      self.sow("intermediates", f"ppm_branch{b}_pooled", y)
      branches.append(resize_bilinear(y, size, align_corners=True))
    logits = self._head(jnp.concatenate(branches, axis=-1), "cls", CLS_WIDTH, train, mask)
    self.sow("intermediates", "logits_eighth", logits)
    logits = resize_bilinear(logits, (h, w), align_corners=True)
    if not (return_aux or self.is_initializing()):
      return logits
    aux = self._head(layer3, "aux", AUX_WIDTH, train, mask)
    self.sow("intermediates", "aux_eighth", aux)
    return logits, resize_bilinear(aux, (h, w), align_corners=True)
