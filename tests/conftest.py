"""Shared test fixtures: where ../shared lives, and absl flags for grain."""

import os
from pathlib import Path

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
