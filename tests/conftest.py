"""Shared test fixtures and helpers: where ../shared lives, absl flags for grain, a tiny HRNet."""

import os
import struct
import subprocess
import sys
import zipfile
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


def write_tiny_checkpoint(directory: Path, num_classes: int = 194, favoured=None) -> Path:
  """A tiny random HRNet in the model format. The `favoured` class ids (default: universal
  road, sky, building and car) get +3 on their logits so that predictions are not all one class."""
  from mseg_jax import models, taxonomy

  if favoured is None:
    favoured = [taxonomy.universal_id(n) for n in ("road", "sky", "building", "car")]
  config = tiny_hrnet_config(num_classes)
  variables = random_variables(config)
  variables["params"]["last_layer.3"]["bias"][list(favoured)] += 3.0
  models.save_checkpoint(directory, config, variables)
  return directory


def write_torch_checkpoint(path: Path, state_dict: dict) -> Path:
  """torch.save's zip format of {"state_dict": OrderedDict(name: float32 tensor)}, pickled by
  hand with the opcodes torch writes (protocol 2), so that no torch is needed."""

  def text(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data

  def ints(values) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", int(v)) for v in values) + b"t"

  ordered_dict = b"ccollections\nOrderedDict\n)R"
  items, storages = [], {}
  for i, (name, value) in enumerate(state_dict.items()):
    value = np.asarray(value, np.float32, order="C")
    storages[str(i)] = value.tobytes()
    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(str(i)) + text("cpu")
    storage += b"J" + struct.pack("<i", value.size) + b"tQ"  # persistent id
    strides = [stride // value.itemsize for stride in value.strides]
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"J\x00\x00\x00\x00"
    tensor += ints(value.shape) + ints(strides) + b"\x89" + ordered_dict + b"tR"
    items.append(text(name) + tensor)
  data = b"\x80\x02}(" + text("state_dict") + ordered_dict + b"(" + b"".join(items) + b"uu."
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", data)
    archive.writestr("archive/byteorder", "little")
    for key, raw in storages.items():
      archive.writestr(f"archive/data/{key}", raw)
  return path


def run_on_simulated_devices(code: str, devices: int, *args, timeout: int = 900) -> str:
  """Runs `code` with `args` in a fresh Python on `devices` simulated CPU devices (conftest and
  the package importable); fails the test with its stderr if it fails; returns its stdout."""
  repo = Path(__file__).resolve().parents[1]
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",  # compiles 2x faster
    PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
  )
  proc = subprocess.run(
    [sys.executable, "-c", code, *map(str, args)],
    cwd=Path(__file__).parent,  # conftest is importable
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout
