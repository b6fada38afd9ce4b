"""Sync BN: a step sharded over 4 (simulated CPU) devices equals the step on 1 device.

Both run in one subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=4:
the same jitted train_step, the same global batch, once on a 1-device mesh and once on a
4-device mesh with the batch sharded on "data". The 3x3 convolutions with 8 or more channels
run as Winograd products (`hrnet.WINOGRAD_MIN_CHANNELS`, 192 in W48), the others directly.
"""

import numpy as np
from conftest import run_on_simulated_devices

CHILD = r"""
import functools, sys
import jax, jax.numpy as jnp, ml_collections, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from mseg_jax import models, train
from mseg_jax.models import hrnet

assert jax.device_count() == 4, jax.devices()
hrnet.WINOGRAD_MIN_CHANNELS = 8
from conftest import tiny_hrnet_config
config = tiny_hrnet_config(num_classes=5, width=4)
model = models.HRNet(config=config)
optim = ml_collections.ConfigDict(dict(base_lr=0.1, momentum=0.9, weight_decay=1e-4, power=0.9))
tx, schedule = train.create_optimizer(optim, 100)
luts = np.stack([np.arange(256), (np.arange(256) + 1) % 5]).astype(np.uint8)
luts[:, 255] = 255
rng = np.random.default_rng(0)
# every crop its own brightness and contrast, so that per-device statistics differ
base = rng.uniform(0, 1, (8, 25, 25, 3)) * rng.uniform(20, 120, (8, 1, 1, 1))
images = np.clip(base + rng.uniform(0, 130, (8, 1, 1, 1)), 0, 255).astype(np.uint8)
labels = rng.integers(0, 5, (8, 25, 25)).astype(np.uint8)
labels[:, :3] = 255
labels[5] = 255  # no valid pixel in crop 5
host = {"image": images, "label": labels, "dataset": np.array([0, 0, 0, 1, 1, 1, 0, 1], np.int32)}
variables = jax.device_get(jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(0), jnp.zeros((1, 25, 25, 3))))

flat = jax.tree_util.tree_flatten_with_path(variables)[0]
out = {f"0/{jax.tree_util.keystr(k)}": v for k, v in flat}
for n in (1, 4):
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])
  with jax.set_mesh(mesh):
    repl = NamedSharding(mesh, P())
    state = jax.device_put(train.init_state(model, tx, None, variables), repl)
    batch = train.global_batch(host, NamedSharding(mesh, P("data")))
    assert len(batch["image"].sharding.device_set) == n
    step = jax.jit(functools.partial(train.train_step, model=model, luts=luts, tx=tx,
                                     schedule=schedule), donate_argnums=0, out_shardings=repl)
    for _ in range(2):
      state, metrics = step(state, batch)
    assert len(state["params"]["conv1"]["kernel"].sharding.device_set) == n
    flat = jax.tree_util.tree_flatten_with_path(
        jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]}))[0]
    out.update({f"{n}/{jax.tree_util.keystr(k)}": v for k, v in flat})
    out[f"{n}/loss"] = np.asarray(metrics["loss"])
np.savez(sys.argv[1], **out)
"""


def test_sharded_step_equals_single_device_step(tmp_path):
  out = tmp_path / "out.npz"
  run_on_simulated_devices(CHILD, 4, out)
  result = np.load(out)
  keys = [k[2:] for k in result.files if k.startswith("1/")]
  assert any("batch_stats" in k for k in keys) and any("params" in k for k in keys)
  for key in keys:
    one, four = result[f"1/{key}"], result[f"4/{key}"]
    assert np.abs(one - four).max() <= 1e-5 * max(1.0, np.abs(one).max()), key
  # the BN statistics agree far more closely than they moved: per-device statistics of crops
  # this different would move them by about as much as the update itself
  stats = [k for k in keys if "batch_stats" in k]
  change = np.concatenate([(result[f"1/{k}"] - result[f"0/{k}"]).ravel() for k in stats])
  diff = np.concatenate([(result[f"1/{k}"] - result[f"4/{k}"]).ravel() for k in stats])
  assert np.linalg.norm(diff) <= 1e-3 * np.linalg.norm(change)
