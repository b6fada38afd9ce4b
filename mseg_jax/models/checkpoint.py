"""The model format: an Orbax checkpoint directory with the config (JSON), params, batch_stats.

Layout: DIR/config.json ({"architecture": "hrnet" | "pspnet", "config": config.to_dict()}; no
architecture means hrnet, as in the first checkpoints) and DIR/variables (Orbax
StandardCheckpointer, {"params", "batch_stats"} as fp32 arrays).
"""

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mseg_jax.models.build import Config, Model, architecture, build, config_from_dict
from mseg_jax.models.convert import abstract_variables

CONFIG_FILE = "config.json"
VARIABLES_DIR = "variables"


def save_checkpoint(directory: str | Path, config: Config, variables: dict[str, Any]) -> None:
  """Writes config + params + batch_stats (fp32) to `directory`, replacing a previous model.

  With several processes every one calls it (orbax's save is collective); files are written
  once, by process 0.
  """
  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  state = {
    c: jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(variables[c]))
    for c in ("params", "batch_stats")
  }
  meta = {"architecture": architecture(config), "config": config.to_dict()}
  if jax.process_index() == 0:
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / VARIABLES_DIR, state, force=True)
    checkpointer.wait_until_finished()


def load_checkpoint(
  directory: str | Path, dtype: Any = jnp.float32
) -> tuple[Model, dict[str, Any]]:
  """(HRNet or PSPNet (config, dtype), {"params", "batch_stats"}) from a save_checkpoint dir."""
  directory = Path(directory).absolute()
  config_file = directory / CONFIG_FILE
  if not config_file.is_file():
    raise FileNotFoundError(
      f"{directory}: no {CONFIG_FILE}, not a mseg_jax model checkpoint (write one with "
      "tools/convert_torch_weights.py or models.save_checkpoint)"
    )
  try:
    meta = json.loads(config_file.read_text())
    config = config_from_dict(meta["config"], meta.get("architecture", "hrnet"))
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{config_file}: invalid model config: {e!r}") from e
  target = abstract_variables(config)
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      variables = checkpointer.restore(directory / VARIABLES_DIR, target)
    except (FileNotFoundError, ValueError) as e:
      raise ValueError(
        f"{directory / VARIABLES_DIR}: cannot restore the variables of {config}: {e}"
      ) from e
  return build(config, dtype), variables
