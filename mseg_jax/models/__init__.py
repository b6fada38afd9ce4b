"""HRNetV2 and PSPNet segmentation models, resizing, the checkpoint format and PyTorch weight
conversion."""

from mseg_jax.models.build import architecture, build, config_from_dict, preset
from mseg_jax.models.checkpoint import (
  CheckpointInfo,
  checkpoint_info,
  load_checkpoint,
  save_checkpoint,
)
from mseg_jax.models.convert import (
  ConversionError,
  backbone_to_variables,
  checkpoint_state_dict,
  infer_config,
  state_dict_to_variables,
  variables_to_state_dict,
)
from mseg_jax.models.hrnet import (
  BatchNorm,
  HRNet,
  HRNetConfig,
  compiler_options,
  fold_batch_norm,
)
from mseg_jax.models.pretrained import PRETRAINED_KINDS, load_pretrained, merge_pretrained
from mseg_jax.models.pspnet import PSPNet, PSPNetConfig
from mseg_jax.models.resize import resize_bilinear

__all__ = [
  "BatchNorm",
  "ConversionError",
  "HRNet",
  "HRNetConfig",
  "CheckpointInfo",
  "PRETRAINED_KINDS",
  "PSPNet",
  "PSPNetConfig",
  "architecture",
  "backbone_to_variables",
  "build",
  "checkpoint_info",
  "checkpoint_state_dict",
  "compiler_options",
  "config_from_dict",
  "fold_batch_norm",
  "infer_config",
  "load_checkpoint",
  "load_pretrained",
  "merge_pretrained",
  "preset",
  "resize_bilinear",
  "save_checkpoint",
  "state_dict_to_variables",
  "variables_to_state_dict",
]
