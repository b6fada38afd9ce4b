"""The model format: an Orbax checkpoint directory with the config (JSON), params, batch_stats.

Layout: DIR/config.json ({"architecture": "hrnet" | "pspnet", "config": config.to_dict(),
"taxonomy": the taxonomy the model predicts in, "name": the model's name}) and DIR/variables
(Orbax StandardCheckpointer, {"params", "batch_stats"} as fp32 arrays). Older checkpoints lack
fields: no architecture means hrnet; no taxonomy means the only taxonomy with the model's class
count, or unknown (None) where several have it; no name means the directory's name.
"""

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mseg_jax.models.build import Config, Model, architecture, build, config_from_dict
from mseg_jax.models.convert import abstract_variables
from mseg_jax.taxonomy import outputs

CONFIG_FILE = "config.json"
VARIABLES_DIR = "variables"


class CheckpointInfo(NamedTuple):
  """What a checkpoint records about its model besides the weights."""

  taxonomy: str | None  # universal, naive or a dataset name; None: unknown (older checkpoint)
  name: str  # row label in result tables


def save_checkpoint(
  directory: str | Path,
  config: Config,
  variables: dict[str, Any],
  *,
  taxonomy: str | None = None,
  name: str | None = None,
) -> None:
  """Writes config + params + batch_stats (fp32) to `directory`, replacing a previous model.

  `taxonomy` (checked against the class count) defaults to the only taxonomy with the model's
  class count (a ValueError if several have it); `name` to the directory's name. With several
  processes every one calls it (orbax's save is collective); files are written once, by
  process 0.
  """
  directory = Path(directory).absolute()
  if taxonomy is None:
    taxonomy = outputs.infer_taxonomy(config.num_classes, str(directory))
  outputs.check_taxonomy(taxonomy, config.num_classes, str(directory))
  directory.mkdir(parents=True, exist_ok=True)
  state = {
    c: jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(variables[c]))
    for c in ("params", "batch_stats")
  }
  meta = {
    "architecture": architecture(config),
    "config": config.to_dict(),
    "taxonomy": taxonomy,
    "name": name or directory.name,
  }
  if jax.process_index() == 0:
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / VARIABLES_DIR, state, force=True)
    checkpointer.wait_until_finished()


def _meta(directory: Path) -> dict[str, Any]:
  config_file = directory / CONFIG_FILE
  if not config_file.is_file():
    raise FileNotFoundError(
      f"{directory}: no {CONFIG_FILE}, not a mseg_jax model checkpoint (write one with "
      "tools/convert_torch_weights.py or models.save_checkpoint)"
    )
  try:
    return json.loads(config_file.read_text())
  except ValueError as e:
    raise ValueError(f"{config_file}: invalid model config: {e!r}") from e


def checkpoint_info(directory: str | Path) -> CheckpointInfo:
  """The taxonomy and name a checkpoint records (see the module docstring for older ones)."""
  directory = Path(directory).absolute()
  meta = _meta(directory)
  where = str(directory / CONFIG_FILE)
  try:
    num_classes = int(meta["config"]["num_classes"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{where}: invalid model config: {e!r}") from e
  taxonomy = meta.get("taxonomy")
  if taxonomy is None:
    candidates = outputs.taxonomies_with(num_classes)
    taxonomy = candidates[0] if len(candidates) == 1 else None
  else:
    outputs.check_taxonomy(taxonomy, num_classes, where)
  return CheckpointInfo(taxonomy, meta.get("name") or directory.name)


def load_checkpoint(
  directory: str | Path, dtype: Any = jnp.float32
) -> tuple[Model, dict[str, Any]]:
  """(HRNet or PSPNet (config, dtype), {"params", "batch_stats"}) from a save_checkpoint dir."""
  directory = Path(directory).absolute()
  config_file = directory / CONFIG_FILE
  meta = _meta(directory)
  try:
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
