"""Any batch on any device count: padding slots that count for nothing, micro-batches, resume.

The global batch is padded to a multiple of the device count with masked slots, left out of
the BatchNorm statistics and the loss, so that a padded step equals the unpadded one.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import random_variables, run_on_simulated_devices, tiny_hrnet_config

from configs import mseg_1m, mseg_3m, mseg_mgda, mseg_naive, pspnet, single_dataset
from mseg_jax import models, taxonomy, train
from mseg_jax.models.hrnet import BatchNorm

# jit options for the in-process steps (like JAX_DISABLE_MOST_OPTIMIZATIONS: compiles faster)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
RECIPES = {
  "mseg_3m:480p": lambda: mseg_3m.get_config("480p"),
  "mseg_3m:720p": lambda: mseg_3m.get_config("720p"),
  "mseg_3m:1080p": lambda: mseg_3m.get_config("1080p"),
  "mseg_1m:relabeled": lambda: mseg_1m.get_config("relabeled"),
  "mseg_1m:unrelabeled": lambda: mseg_1m.get_config("unrelabeled"),
  "single_dataset:cityscapes-19": lambda: single_dataset.get_config("cityscapes-19"),
  "pspnet:1080p": lambda: pspnet.get_config("1080p"),
  "mseg_mgda": mseg_mgda.get_config,
  "mseg_naive": mseg_naive.get_config,
}


def _config(recipe: str, **overrides) -> ml_collections.ConfigDict:
  config = RECIPES[recipe]()
  config.data.data_root = "/data"
  config.init.checkpoint = "/model"
  config.update(overrides)
  return config


def test_masked_batch_norm_equals_batch_norm_of_the_real_rows():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (6, 5, 4, 3)).astype(np.float32)
  mask = np.array([1, 0, 1, 1, 0, 1], bool)
  bn = BatchNorm(momentum=0.9)
  variables = {
    "params": {"scale": rng.uniform(0.5, 2, 3), "bias": rng.uniform(-1, 1, 3)},
    "batch_stats": {"mean": rng.uniform(-1, 1, 3), "var": rng.uniform(0.5, 2, 3)},
  }
  masked, masked_stats = bn.apply(variables, x, True, mask, mutable=["batch_stats"])
  real, real_stats = bn.apply(variables, x[mask], True, mutable=["batch_stats"])
  np.testing.assert_allclose(masked[mask], real, rtol=1e-5, atol=1e-5)
  for key in ("mean", "var"):  # the running update, n/(n-1) included, sees the real rows only
    np.testing.assert_allclose(
      masked_stats["batch_stats"][key], real_stats["batch_stats"][key], rtol=1e-6
    )
  # the padding rows are normalized too (finite), whatever they hold
  x[~mask] = 1e4
  assert np.isfinite(bn.apply(variables, x, True, mask, mutable=["batch_stats"])[0]).all()


@pytest.mark.parametrize("devices", [1, 2, 4, 7, 8, 16])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_plans_on_any_device_count(recipe, devices):
  config = _config(recipe)
  plan = train.make_plan(config, devices=devices, processes=1)
  batch = config.batch_size
  assert plan.micro_batches == 1
  assert plan.slots % devices == 0 and batch <= plan.slots < batch + devices
  assert sum(plan.device_crops()) == batch
  assert max(plan.device_crops()) == plan.device_slots
  padding = plan.slots - batch
  assert plan.summary().startswith(
    f"{batch} crops on {devices} device{'s' * (devices > 1)}: {plan.slots} slots, "
    f"{100 * padding / plan.slots:.1f}% padding"
  )


def test_the_issue_example_summary():
  plan = train.make_plan(_config("mseg_3m:1080p"), devices=8, processes=1)
  assert plan.summary().startswith("35 crops on 8 devices: 40 slots, 12.5% padding")
  assert plan.device_crops() == [4, 4, 5, 4, 4, 5, 4, 5]


@pytest.mark.parametrize("limit", [1, 2, 3, 4])
def test_max_device_batch_splits_the_step_and_says_what_differs(limit):
  plan = train.make_plan(
    _config("mseg_3m:1080p", max_device_batch=limit), devices=8, processes=1
  )  # 5 crops on the fullest device
  per_pass = plan.device_slots // plan.micro_batches
  assert plan.device_slots % plan.micro_batches == 0 and per_pass <= limit
  assert plan.micro_batches == -(-5 // limit)
  # every micro-batch holds a real crop of the fullest device: no all-padding BN statistics
  assert (plan.micro_batches - 1) * per_pass < max(plan.device_crops())
  assert "BatchNorm normalizes each micro-batch" in plan.summary()
  with pytest.raises(ValueError, match="max_device_batch=0"):
    train.make_plan(_config("mseg_3m:1080p", max_device_batch=0), devices=8, processes=1)
  with pytest.raises(ValueError, match="which MGDA cannot"):
    train.make_plan(_config("mseg_mgda", max_device_batch=limit), devices=8, processes=1)


def test_processes_pad_their_own_rows():
  plan = train.make_plan(_config("mseg_3m:1080p"), devices=8, processes=2)
  rows = np.arange(35)
  parts = [rows[:17], rows[17:]]  # batching.local_rows: [floor(p*35/2), floor((p+1)*35/2))
  padded = [
    train.pad_host_batch(
      {"image": p[:, None], "label": p[:, None, None].astype(np.uint8), "dataset": p}, plan, i
    )
    for i, p in enumerate(parts)
  ]
  valid = np.concatenate([p["valid"] for p in padded])
  image = np.concatenate([p["image"][:, 0] for p in padded])
  assert len(valid) == 40
  np.testing.assert_array_equal(image[valid], rows)  # the crops in order, devices' blocks of 5
  np.testing.assert_array_equal(valid.reshape(8, 5).sum(1), plan.device_crops())
  assert (np.concatenate([p["label"] for p in padded])[~valid] == taxonomy.IGNORE).all()
  assert (image[~valid] == 0).all()
  with pytest.raises(ValueError, match="process 1 got 17 crops, expected 18"):
    train.pad_host_batch({k: v[:17] for k, v in padded[0].items() if k != "valid"}, plan, 1)


def test_micro_batches_add_up_to_the_step_when_their_statistics_agree():
  # a batch of two copies of the same 3 crops: each micro-batch's BN statistics are the
  # batch's, so the micro-batched step must give the one-pass loss, gradients and running mean
  config = tiny_hrnet_config(num_classes=5, width=4)
  model = models.HRNet(config=config)
  variables = random_variables(config)
  rng = np.random.default_rng(0)
  half = {
    "image": rng.integers(0, 255, (3, 17, 17, 3), dtype=np.uint8),
    "label": rng.integers(0, 5, (3, 17, 17)).astype(np.uint8),
    "dataset": np.array([0, 1, 1], np.int32),
  }
  half["label"][2] = 255  # dataset 1 has fewer valid pixels than dataset 0
  batch = {k: np.concatenate([v, v]) for k, v in half.items()}
  luts = np.stack([np.arange(256), (np.arange(256) + 1) % 5]).astype(np.uint8)
  luts[:, 255] = 255
  loss_fn = functools.partial(train.forward_loss, model=model, luts=luts)
  one = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), compiler_options=FAST_COMPILE)(
    variables["params"], variables["batch_stats"], batch
  )
  two = jax.jit(
    functools.partial(train.micro_batch_gradients, loss_fn, luts=luts, micro_batches=2),
    compiler_options=FAST_COMPILE,
  )(variables["params"], variables["batch_stats"], batch, rng=jax.random.key(0))
  (loss1, (stats1, per1)), grads1 = one
  (loss2, (stats2, per2)), grads2 = two
  np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
  for key in ("dataset_loss", "dataset_pixel_acc"):  # micro-batches add up to the step's
    np.testing.assert_allclose(per2[key], per1[key], rtol=1e-5, err_msg=key)
  # fp32 noise of this net: the one-pass gradients of the 3 crops alone differ as much
  flat1, flat2 = (np.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (grads1, grads2))
  assert np.linalg.norm(flat2 - flat1) <= 1e-3 * np.linalg.norm(flat1)
  # the running variance differs only by n/(n-1): n pixels of a micro-batch, 2n of the batch
  _, shapes = jax.eval_shape(
    functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"]),
    variables,
    jnp.zeros((6, 17, 17, 3)),
  )
  m = 0.99
  for name, stats in stats1.items():
    np.testing.assert_allclose(stats2[name]["mean"], stats["mean"], rtol=1e-4, atol=1e-6)
    n = 3 * np.prod(shapes["intermediates"][name]["__call__"][0].shape[1:3])
    start = m * variables["batch_stats"][name]["var"]
    np.testing.assert_allclose(
      (stats2[name]["var"] - start) * (2 * n / (2 * n - 1)),
      (stats["var"] - start) * (n / (n - 1)),
      rtol=1e-3,
      atol=1e-6,
    )


def test_resume_check_names_the_fields_that_change_the_math():
  plan = train.make_plan(_config("mseg_3m:1080p"), devices=8, processes=1)
  same = train.make_plan(
    _config("mseg_3m:1080p", log_every=7, max_device_batch=18), devices=2, processes=2
  )
  same.config.data.data_root = "/elsewhere"
  assert train.config_changes(plan.to_json(), same.to_json()) == []
  other = _config("mseg_3m:1080p", batch_size=14)
  other.optim.base_lr = 0.02
  changes = train.config_changes(plan.to_json(), train.make_plan(other, 8, 1).to_json())
  assert "batch_size: 35 -> 14" in changes
  assert "optim.base_lr: 0.01 -> 0.02" in changes
  assert "derived.total_steps: 600000 -> 1500000" in changes
  split = train.make_plan(_config("mseg_3m:1080p", max_device_batch=2), 8, 1)
  assert train.config_changes(plan.to_json(), split.to_json()) == ["derived.micro_batches: 1 -> 3"]


CHILD = r"""
import functools, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from conftest import random_variables, tiny_hrnet_config
from configs import mseg_3m
from mseg_jax import models, train

assert jax.device_count() == 8, jax.devices()
config = mseg_3m.get_config("1080p")
config.data.data_root = "/data"
config.init.kind = "none"
model_config = tiny_hrnet_config(num_classes=194, width=4)
model = models.HRNet(config=model_config)
variables = random_variables(model_config)
rng = np.random.default_rng(0)
# every crop its own brightness and contrast, so that per-device statistics differ
base = rng.uniform(0, 1, (35, 17, 17, 3)) * rng.uniform(20, 120, (35, 1, 1, 1))
host = {
  "image": np.clip(base + rng.uniform(0, 130, (35, 1, 1, 1)), 0, 255).astype(np.uint8),
  "label": rng.integers(0, 19, (35, 17, 17)).astype(np.uint8),
  "dataset": np.repeat(np.arange(7, dtype=np.int32), 5),
}
host["label"][:, :2] = 255
out = {}
for n in (1, 8):
  plan = train.make_plan(config, devices=n, processes=1)
  assert plan.padded == (n == 8), plan.summary()
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])
  with jax.set_mesh(mesh):
    batch = train.global_batch(train.pad_host_batch(host, plan, 0), NamedSharding(mesh, P("data")))
    assert batch["image"].shape[0] == (35 if n == 1 else 40)
    grad_fn = jax.jit(jax.value_and_grad(
      functools.partial(train.forward_loss, model=model, luts=plan.luts), has_aux=True),
      out_shardings=NamedSharding(mesh, P()))
    (loss, (stats, per_dataset)), grads = grad_fn(
      variables["params"], variables["batch_stats"], batch)
  tree = jax.device_get({"grads": grads, "batch_stats": stats})
  out.update({f"{n}/{jax.tree_util.keystr(k)}": v
              for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]})
  out[f"{n}/loss"] = np.asarray(loss)
  out[f"{n}/per_dataset"] = np.asarray(per_dataset["dataset_loss"])
out.update({f"0/{jax.tree_util.keystr(k)}": v for k, v in
            jax.tree_util.tree_flatten_with_path({"batch_stats": variables["batch_stats"]})[0]})
np.savez(sys.argv[1], **out)
"""


def test_batch_35_on_8_devices_equals_the_step_on_1_device(tmp_path):
  out = tmp_path / "out.npz"
  run_on_simulated_devices(CHILD, 8, out, timeout=600)
  result = np.load(out)
  keys = [k[2:] for k in result.files if k.startswith("1/")]
  assert any("grads" in k for k in keys) and any("batch_stats" in k for k in keys)
  for key in keys:
    one, eight = result[f"1/{key}"], result[f"8/{key}"]
    assert np.abs(one - eight).max() <= 1e-5 * max(1.0, np.abs(one).max()), key
  # the padded step's BN statistics agree far more closely than they moved
  stats = [k for k in keys if "batch_stats" in k]
  change = np.concatenate([(result[f"1/{k}"] - result[f"0/{k}"]).ravel() for k in stats])
  diff = np.concatenate([(result[f"1/{k}"] - result[f"8/{k}"]).ravel() for k in stats])
  assert np.linalg.norm(diff) <= 1e-3 * np.linalg.norm(change)
  assert jnp.isfinite(result["8/loss"])


def test_resume_stops_on_a_changed_config_unless_told_to_go_on(tmp_path):
  plan = train.make_plan(_config("mseg_3m:1080p"), devices=8, processes=1)
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.save(7, args=ocp.args.Composite(plan=ocp.args.JsonSave(plan.to_json())))
    manager.wait_until_finished()
    train.check_resume(manager, 7, train.make_plan(_config("mseg_3m:1080p"), 16, 2))
    changed = _config("mseg_3m:1080p", batch_size=14)
    with pytest.raises(train.ResumeMismatch, match=r"(?s)step 7.*batch_size: 35 -> 14"):
      train.check_resume(manager, 7, train.make_plan(changed, 8, 1))
    changed.resume_despite_changes = True
    train.check_resume(manager, 7, train.make_plan(changed, 8, 1))
