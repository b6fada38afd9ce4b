"""PyTorch HRNet/PSPNet state_dict <-> Flax variables, architecture inference, strict checks.

Flax modules are named by their PyTorch module path, so `conv.weight` (OIHW) <-> params[conv]
["kernel"] (HWIO), `conv.bias` <-> params[conv]["bias"], and a BatchNorm's weight, bias,
running_mean, running_var <-> params[bn]["scale"], params[bn]["bias"], batch_stats[bn]["mean"],
batch_stats[bn]["var"]. Every key and shape is checked both ways (the official loader used
strict=False and hid mismatches).
"""

import functools
import re
from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mseg_jax.models import pspnet
from mseg_jax.models.build import Config, build
from mseg_jax.models.hrnet import HRNetConfig

HEAD_PREFIX = "last_layer."
# The ImageNet classification HRNet's head (cls_hrnet.py), ignored by --backbone-only.
CLASSIFIER_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
PSPNET_HEAD_PREFIXES = ("ppm.", "cls.", "aux.")
# The ImageNet ResNet with the deep stem that the official PSPNet starts from (semseg's
# resnet50_v2.pth, loaded into resnet.py's ResNet): PSPNet's layer0 is its stem, module by
# module, and its classifier is `fc`.
RESNET_STEM = {
  "conv1.": "layer0.0.",
  "bn1.": "layer0.1.",
  "conv2.": "layer0.3.",
  "bn2.": "layer0.4.",
  "conv3.": "layer0.6.",
  "bn3.": "layer0.7.",
}


class ConversionError(ValueError):
  """A checkpoint does not match the HRNet or PSPNet architecture."""


def checkpoint_state_dict(checkpoint: Any, path: str = "checkpoint") -> dict[str, np.ndarray]:
  """The model state_dict of a loaded `.pth` object.

  Accepts the released wrapping {"state_dict": {"module." + key: tensor}, "optimizer": ...} and
  a bare state_dict; strips "module.", drops `num_batches_tracked` and every other top-level key.
  """
  state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state_dict, dict):
    raise ConversionError(
      f"{path}: expected a state_dict or a dict with 'state_dict', got {type(checkpoint).__name__}"
    )
  out = {}
  for key, value in state_dict.items():
    if not isinstance(key, str) or not isinstance(value, np.ndarray):
      raise ConversionError(f"{path}: state_dict entry {key!r} is not a named tensor")
    key = key.removeprefix("module.")
    if not key.endswith(".num_batches_tracked"):
      out[key] = value
  return out


def _num_indices(state_dict: dict[str, Any], pattern: str) -> int:
  """1 + the largest integer captured by `pattern` over the keys (0 when none matches)."""
  regex = re.compile(pattern)
  found = [int(m.group(1)) for k in state_dict if (m := regex.match(k))]
  return max(found) + 1 if found else 0


def _is_imagenet_resnet(state_dict: dict[str, Any]) -> bool:
  return "conv3.weight" in state_dict and "layer1.0.conv1.weight" in state_dict


def _pspnet_names(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """An ImageNet deep-stem ResNet's state_dict with PSPNet's names (conv1 -> layer0.0, bn1 ->
  layer0.1, ...); any other state_dict unchanged."""
  if not _is_imagenet_resnet(state_dict):
    return state_dict
  out = {}
  for key, value in state_dict.items():
    stem = next((p for p in RESNET_STEM if key.startswith(p)), None)
    out[key if stem is None else RESNET_STEM[stem] + key.removeprefix(stem)] = value
  return out


def _infer_pspnet_config(
  state_dict: dict[str, np.ndarray], num_classes: int | None, path: str
) -> pspnet.PSPNetConfig:
  """PSPNetConfig: layers from layer3's block count, the bin count from the PPM keys."""
  blocks = tuple(_num_indices(state_dict, rf"layer{k}\.(\d+)\.conv1\.weight") for k in (1, 2, 3, 4))
  layers = [n for n, b in pspnet.RESNET_BLOCKS.items() if b == blocks]
  if not layers:
    raise ConversionError(
      f"{path}: cannot infer the PSPNet depth, layer1..layer4 have {blocks} blocks "
      f"(known: {pspnet.RESNET_BLOCKS})"
    )
  num_bins = _num_indices(state_dict, r"ppm\.features\.(\d+)\.")
  default = pspnet.PSPNetConfig()
  if num_bins not in (0, len(default.bins)):  # 0: an ImageNet ResNet, no PPM
    raise ConversionError(
      f"{path}: {num_bins} PPM branches; the bin sizes are not in a state_dict, only the "
      f"official {default.bins} are known"
    )
  if num_classes is None:
    if "cls.4.weight" not in state_dict:
      raise ConversionError(f"{path}: cannot infer the class count, cls.4.weight is missing")
    num_classes = state_dict["cls.4.weight"].shape[0]
  return pspnet.PSPNetConfig(num_classes=int(num_classes), layers=layers[0])


def infer_config(
  state_dict: dict[str, np.ndarray], num_classes: int | None = None, path: str = "state_dict"
) -> Config:
  """HRNetConfig or PSPNetConfig (a `layer0.*` deep stem, or an ImageNet deep-stem ResNet) from
  key names and shapes; num_classes from `last_layer.3.weight` / `cls.4.weight` unless given."""
  if any(k.startswith("layer0.") for k in state_dict) or _is_imagenet_resnet(state_dict):
    return _infer_pspnet_config(_pspnet_names(state_dict), num_classes, path)

  def shape(key):
    if key not in state_dict:
      raise ConversionError(f"{path}: cannot infer the HRNet architecture, {key} is missing")
    return state_dict[key].shape

  modules, blocks, widths = [], [], []
  stage = 2
  while f"stage{stage}.0.branches.0.0.conv1.weight" in state_dict:
    s = rf"stage{stage}\."
    branches = _num_indices(state_dict, s + r"0\.branches\.(\d+)\.")
    modules.append(_num_indices(state_dict, s + r"(\d+)\."))
    blocks.append(
      tuple(
        _num_indices(state_dict, s + rf"0\.branches\.{b}\.(\d+)\.conv1\.weight")
        for b in range(branches)
      )
    )
    widths.append(
      tuple(shape(f"stage{stage}.0.branches.{b}.0.conv1.weight")[0] for b in range(branches))
    )
    stage += 1
  if not modules:
    raise ConversionError(f"{path}: cannot infer the HRNet architecture, no stage2.* keys")
  try:
    return HRNetConfig(
      num_classes=int(shape("last_layer.3.weight")[0] if num_classes is None else num_classes),
      stage1_blocks=_num_indices(state_dict, r"layer1\.(\d+)\.conv1\.weight"),
      stage1_planes=int(shape("layer1.0.conv1.weight")[0]),
      stage_modules=tuple(modules),
      stage_blocks=tuple(blocks),
      stage_widths=tuple(tuple(int(w) for w in ws) for ws in widths),
    )
  except ValueError as e:
    raise ConversionError(f"{path}: not an HRNetV2 state_dict: {e}") from e


@functools.lru_cache(maxsize=8)
def abstract_variables(config: Config) -> dict[str, Any]:
  """{"params", "batch_stats"} of the model of `config` as ShapeDtypeStructs (nothing computed)."""
  model = build(config)
  x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def torch_shapes(config: Config) -> dict[str, tuple[int, ...]]:
  """The official state_dict's keys (no `module.`, no num_batches_tracked) and shapes."""
  variables = abstract_variables(config)
  shapes = {}
  for name, leaves in variables["params"].items():
    if "kernel" in leaves:
      kh, kw, i, o = leaves["kernel"].shape
      shapes[f"{name}.weight"] = (o, i, kh, kw)
      if "bias" in leaves:
        shapes[f"{name}.bias"] = leaves["bias"].shape
    else:
      for key in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{key}"] = leaves["scale"].shape
  return shapes


def _check(
  state_dict: dict[str, np.ndarray],
  expected: dict[str, tuple[int, ...]],
  config: Config,
  path: str,
) -> None:
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected]
  wrong = [
    f"{k}: {tuple(state_dict[k].shape)}, expected {expected[k]}"
    for k in expected
    if k in state_dict and tuple(state_dict[k].shape) != expected[k]
  ]
  not_float = [
    f"{k}: {state_dict[k].dtype}"
    for k in expected
    if k in state_dict and not np.issubdtype(state_dict[k].dtype, np.floating)
  ]
  problems = [
    (f"missing keys ({len(missing)})", missing),
    (f"unexpected keys ({len(unexpected)})", unexpected),
    (f"keys with the wrong shape ({len(wrong)})", wrong),
    (f"keys that are not floating point ({len(not_float)})", not_float),
  ]
  problems = [(title, items) for title, items in problems if items]
  if problems:
    details = "\n".join(
      f"  {title}:\n" + "\n".join(f"    {item}" for item in items) for title, items in problems
    )
    raise ConversionError(f"{path}: state_dict does not match {config}:\n{details}")


def _to_variables(state_dict: dict[str, np.ndarray], config: Config) -> dict[str, Any]:
  params, batch_stats = {}, {}
  for name, leaves in abstract_variables(config)["params"].items():
    if f"{name}.weight" not in state_dict:
      continue
    get = lambda key, n=name: np.asarray(state_dict[f"{n}.{key}"], np.float32)  # noqa: E731
    if "kernel" in leaves:
      params[name] = {"kernel": get("weight").transpose(2, 3, 1, 0)}
      if "bias" in leaves:
        params[name]["bias"] = get("bias")
    else:
      params[name] = {"scale": get("weight"), "bias": get("bias")}
      batch_stats[name] = {"mean": get("running_mean"), "var": get("running_var")}
  return {"params": params, "batch_stats": batch_stats}


def state_dict_to_variables(
  state_dict: dict[str, np.ndarray], config: Config, path: str = "state_dict"
) -> dict[str, Any]:
  """Flax variables (numpy fp32) from a full segmentation state_dict, checked key by key."""
  _check(state_dict, torch_shapes(config), config, path)
  return _to_variables(state_dict, config)


def _init_head(config: Config, prefixes: tuple[str, ...], seed: int) -> dict[str, Any]:
  """Fresh variables for the modules under `prefixes`, as the model initializes them.

  Conv weights N(0, 0.001) (the official HRNet init_weights) or, for PSPNet, He-normal over
  fan-out (ResNet's init, as `PSPNet._conv`); conv biases PyTorch's U(+-1/sqrt(fan_in)); BN
  weight 1, bias 0, running stats 0 and 1. (numpy: jit-compiling `HRNet.init` takes minutes on a
  2-core CPU.)
  """
  rng = np.random.default_rng(seed)
  params, batch_stats = {}, {}
  for name, leaves in abstract_variables(config)["params"].items():
    if not name.startswith(prefixes):
      continue
    if "kernel" in leaves:
      shape = leaves["kernel"].shape
      fan_out = shape[0] * shape[1] * shape[3]
      std = 0.001 if isinstance(config, HRNetConfig) else np.sqrt(2 / fan_out)
      params[name] = {"kernel": rng.normal(0, std, shape).astype(np.float32)}
      if "bias" in leaves:
        bound = 1 / np.sqrt(np.prod(shape[:3]))
        params[name]["bias"] = rng.uniform(-bound, bound, shape[3]).astype(np.float32)
    else:
      (c,) = leaves["scale"].shape
      params[name] = {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
      batch_stats[name] = {"mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32)}
  return {"params": params, "batch_stats": batch_stats}


def backbone_to_variables(
  state_dict: dict[str, np.ndarray], config: Config, seed: int = 0, path: str = "state_dict"
) -> dict[str, Any]:
  """Loads an ImageNet checkpoint into the backbone; the segmentation head is fresh (`_init_head`).

  HRNet: the ImageNet HRNet, whose classification head (incre_modules, downsamp_modules,
  final_layer, classifier) and any last_layer keys are ignored. PSPNet: the ImageNet ResNet with
  the deep stem that the official PSPNet loads (its stem renamed to layer0, `fc` ignored), or
  a PSPNet's own layer0-layer4; ppm, cls and aux are fresh. Every backbone key is checked as in
  state_dict_to_variables.
  """
  if isinstance(config, HRNetConfig):
    head, ignored = (HEAD_PREFIX,), CLASSIFIER_PREFIXES
  else:
    state_dict, head, ignored = _pspnet_names(state_dict), PSPNET_HEAD_PREFIXES, ("fc.",)
  backbone = {k: v for k, v in state_dict.items() if not k.startswith(head + ignored)}
  expected = {k: s for k, s in torch_shapes(config).items() if not k.startswith(head)}
  _check(backbone, expected, config, path)
  variables = _to_variables(backbone, config)
  fresh = _init_head(config, head, seed)
  return {c: variables[c] | fresh[c] for c in variables}


def variables_to_state_dict(variables: dict[str, Any]) -> OrderedDict:
  """The official state_dict (torch layout, numpy fp32, no `module.`) of HRNet/PSPNet variables."""
  out = OrderedDict()
  batch_stats = variables.get("batch_stats", {})
  for name, leaves in variables["params"].items():
    leaves = jax.device_get(leaves)
    if "kernel" in leaves:
      out[f"{name}.weight"] = np.asarray(leaves["kernel"], np.float32).transpose(3, 2, 0, 1)
      if "bias" in leaves:
        out[f"{name}.bias"] = np.asarray(leaves["bias"], np.float32)
    else:
      stats = jax.device_get(batch_stats[name])
      out[f"{name}.weight"] = np.asarray(leaves["scale"], np.float32)
      out[f"{name}.bias"] = np.asarray(leaves["bias"], np.float32)
      out[f"{name}.running_mean"] = np.asarray(stats["mean"], np.float32)
      out[f"{name}.running_var"] = np.asarray(stats["var"], np.float32)
  return out
