"""Shared test fixtures and helpers: where ../shared lives, absl flags for grain, a tiny HRNet."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MSEG_JAX_SHARED", REPO.parent / "shared"))

# grain reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()


def shared_path(*parts: str) -> Path:
  """A path under ../shared (MSEG_JAX_SHARED); skips when missing, fails under CI."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    message = f"{path} is missing (set MSEG_JAX_SHARED)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def shared() -> Path:
  return shared_path()


@pytest.fixture(scope="session")
def golden_small():
  """The golden small official HRNet as (model, variables), converted from its .pth."""
  from mseg_jax import models, torch_checkpoint

  path = shared_path("golden", "hrnet_small_random.pth")
  state_dict = models.checkpoint_state_dict(torch_checkpoint.load(path), str(path))
  config = models.infer_config(state_dict)
  return models.HRNet(config=config), models.state_dict_to_variables(state_dict, config)


def tiny_hrnet_config(num_classes: int = 194, width: int = 8):
  """A tiny HRNet: one module and one block per stage, branch widths width * (1, 2, 4, 8)."""
  from mseg_jax import models

  w = width
  return models.HRNetConfig(
    num_classes=num_classes,
    stage1_blocks=1,
    stage1_planes=8,
    stage_modules=(1, 1, 1),
    stage_blocks=((1, 1), (1, 1, 1), (1, 1, 1, 1)),
    stage_widths=((w, 2 * w), (w, 2 * w, 4 * w), (w, 2 * w, 4 * w, 8 * w)),
  )


def random_variables(config, seed: int = 0) -> dict:
  """He-scaled random HRNet variables (numpy: no slow jit of HRNet.init)."""
  from mseg_jax.models.convert import abstract_variables

  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    if name.endswith("['var']") or name.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.uniform(-0.1, 0.1, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(config))


def write_tiny_checkpoint(directory: Path, num_classes: int = 194) -> Path:
  """A tiny random HRNet in the model format, with a few universal classes favoured so that
  predictions are not all one class."""
  from mseg_jax import models, taxonomy

  config = tiny_hrnet_config(num_classes)
  variables = random_variables(config)
  if num_classes == taxonomy.NUM_UNIVERSAL:
    bias = variables["params"]["last_layer.3"]["bias"]
    bias[[taxonomy.universal_id(n) for n in ("road", "sky", "building", "car")]] += 3.0
  models.save_checkpoint(directory, config, variables)
  return directory
