"""The two architectures behind one interface: presets, configs by name, model from config."""

from typing import Any

import jax.numpy as jnp

from mseg_jax.models import hrnet, pspnet

Config = hrnet.HRNetConfig | pspnet.PSPNetConfig
Model = hrnet.HRNet | pspnet.PSPNet


def architecture(config: Config) -> str:
  """ "hrnet" or "pspnet": the name a checkpoint's config.json records."""
  return "pspnet" if isinstance(config, pspnet.PSPNetConfig) else "hrnet"


def config_from_dict(d: dict[str, Any], architecture: str = "hrnet") -> Config:
  """The config of `architecture` from its `to_dict()`."""
  if architecture == "hrnet":
    return hrnet.HRNetConfig.from_dict(d)
  if architecture == "pspnet":
    return pspnet.PSPNetConfig.from_dict(d)
  raise ValueError(f"unknown architecture {architecture!r}; use hrnet or pspnet")


def preset(name: str, num_classes: int = 194) -> Config:
  """A named config: hrnet_w48 (the released MSeg model), hrnet_w32, hrnet_w18, small (golden),
  pspnet50, pspnet101, pspnet152."""
  if name.startswith("pspnet"):
    return pspnet.preset(name, num_classes)
  return hrnet.preset(name, num_classes)


def build(config: Config, dtype: Any = jnp.float32) -> Model:
  """HRNet or PSPNet for `config`, computing in `dtype`."""
  if isinstance(config, pspnet.PSPNetConfig):
    return pspnet.PSPNet(config=config, dtype=dtype)
  return hrnet.HRNet(config=config, dtype=dtype)
