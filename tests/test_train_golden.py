"""The train step reproduces two official SGD steps (golden README "Training step golden").

Every check of the README's tolerance table; each docstring gives its number there.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import shared_path

from mseg_jax import models, torch_checkpoint, train
from mseg_jax.normalization import normalize


@pytest.fixture(scope="module", autouse=True)
def _settings():
  """fp32 matmuls (no TF32 on GPU); fewer XLA passes, which compiles 2x faster. Restored after."""
  settings = {"jax_default_matmul_precision": "highest", "jax_disable_most_optimizations": True}
  saved = {name: jax.config.values[name] for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


SPEC = [  # the 11 parameters with stored gradients
  "conv1.weight",
  "bn1.weight",
  "bn1.bias",
  "stage4.1.branches.3.1.bn2.weight",
  "stage4.1.fuse_layers.0.3.0.weight",
  "stage4.1.fuse_layers.3.0.2.0.weight",
  "last_layer.0.weight",
  "last_layer.0.bias",
  "last_layer.1.weight",
  "last_layer.3.weight",
  "last_layer.3.bias",
]
EPS32 = 2.0**-23


@pytest.fixture(scope="module")
def golden():
  expected = dict(np.load(shared_path("golden", "train_step_expected.npz"), allow_pickle=False))
  inputs = dict(np.load(shared_path("golden", "train_step_inputs.npz"), allow_pickle=False))
  state_dict = models.checkpoint_state_dict(
    torch_checkpoint.load(shared_path("golden", "hrnet_small_random.pth"))
  )
  config = models.preset("small")
  variables = models.state_dict_to_variables(state_dict, config)
  return expected, inputs, state_dict, config, variables


def _tx(expected):
  optim = ml_collections.ConfigDict(
    dict(
      base_lr=float(expected["hp/base_lr"]),
      momentum=float(expected["hp/momentum"]),
      weight_decay=float(expected["hp/weight_decay"]),
      power=float(expected["hp/power"]),
    )
  )
  return train.create_optimizer(optim, int(expected["hp/max_iter"]))


@pytest.fixture(scope="module")
def run(golden):
  """Two train steps (train_step = value_and_grad(forward_loss) + apply_gradients), with the
  step-1 gradients and train-mode quarter logits."""
  expected, inputs, _, config, variables = golden
  model = models.HRNet(config=config)
  luts = np.arange(256, dtype=np.uint8)[None]  # labels are universal ids already
  batch = {
    "image": jnp.asarray(inputs["images_rgb_uint8"]),
    "label": jnp.asarray(inputs["labels"].astype(np.uint8)),
    "dataset": jnp.zeros(2, jnp.int32),
  }
  tx, schedule = _tx(expected)
  grad_fn = jax.jit(
    jax.value_and_grad(functools.partial(train.forward_loss, model=model, luts=luts), has_aux=True)
  )
  apply_fn = jax.jit(functools.partial(train.apply_gradients, tx=tx))
  state = train.init_state(model, tx, None, variables)
  out = {}
  for k in (1, 2):
    out[f"lr{k}"] = float(schedule(state["step"]))
    (loss, (batch_stats, _)), grads = grad_fn(state["params"], state["batch_stats"], batch)
    state = apply_fn(state, grads, batch_stats)
    out[f"loss{k}"] = float(loss)
    out[f"state{k}"] = models.variables_to_state_dict(
      jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    )
    if k == 1:
      out["grads"] = models.variables_to_state_dict(
        {"params": jax.device_get(grads), "batch_stats": variables["batch_stats"]}
      )
  quarter, _ = jax.jit(
    functools.partial(model.apply, train=True, return_quarter=True, mutable=["batch_stats"])
  )(variables, normalize(batch["image"]))
  out["quarter"] = np.asarray(quarter)
  out["step"] = int(state["step"])
  return out


def test_uint8_path_gives_the_official_normalized_input(golden):
  _, inputs, *_ = golden
  ours = np.asarray(normalize(inputs["images_rgb_uint8"])).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(ours, inputs["images"], atol=1e-6, rtol=0)


def test_step1_loss_matches_official(golden, run):
  """README check 1."""
  ref = golden[0]["loss"][0]
  assert abs(run["loss1"] - ref) / ref <= 2e-5


def test_step1_quarter_resolution_logits_match_official(golden, run):
  """README check 2."""
  ref = golden[0]["logits_quarter_step1"]
  ours = run["quarter"].transpose(0, 3, 1, 2)
  assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-4


def test_bn_running_stats_after_step1_match_official(golden, run):
  """README check 3."""
  expected, _, p0, *_ = golden
  keys = [k[len("bn_after_step1/") :] for k in expected if k.startswith("bn_after_step1/")]
  assert len(keys) == 252
  for key in keys:
    ref = expected[f"bn_after_step1/{key}"]
    s = np.abs(ref - p0[key]).max() + 8 * EPS32 * np.abs(ref).max()
    assert np.abs(run["state1"][key] - ref).max() / s <= 5e-3, key


def test_step1_gradients_match_official(golden, run):
  """README check 4."""
  expected = golden[0]
  for key in SPEC:
    if key == "last_layer.0.bias":
      continue
    ref = expected[f"grad_step1/{key}"]
    assert np.linalg.norm(run["grads"][key] - ref) / np.linalg.norm(ref) <= 0.05, key


def test_step1_gradient_norms_of_all_parameters_match_official(golden, run):
  """README check 5."""
  expected = golden[0]
  keys = [str(k) for k in expected["param_keys"]]
  assert len(keys) == 381
  ref = expected["grad_step1_l2norm"]
  ours = np.array([np.linalg.norm(run["grads"][k].astype(np.float64)) for k in keys])
  big = ref > 1e-6 * ref.max()
  assert (np.abs(ours - ref)[big] / ref[big]).max() <= 0.04


def test_bias_before_bn_has_zero_gradient(run):
  """README check 6."""
  assert np.abs(run["grads"]["last_layer.0.bias"]).max() <= 1e-5


def test_optimizer_replayed_on_official_gradients_gives_official_params(golden):
  """README check 7."""
  expected, _, p0, *_ = golden
  tx, schedule = _tx(expected)
  np.testing.assert_allclose([schedule(0), schedule(1)], expected["lr"], rtol=1e-6)
  params = {k: jnp.asarray(p0[k]) for k in SPEC}
  opt_state = tx.init(params)
  for name in ("grad_step1", "grad_step2"):
    grads = {k: jnp.asarray(expected[f"{name}/{k}"]) for k in SPEC}
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  for key in SPEC:
    ref = expected[key]
    scale = 1e-4 * np.abs(ref - p0[key]).max() + 2 * EPS32 * np.abs(ref).max()
    assert np.abs(np.asarray(params[key]) - ref).max() / scale <= 1, key


def test_step2_loss_and_both_learning_rates_match_official(golden, run):
  """README check 8."""
  assert abs(run["loss2"] - golden[0]["loss"][1]) <= 0.1
  np.testing.assert_allclose([run["lr1"], run["lr2"]], golden[0]["lr"], rtol=1e-6)


def _relative_update_error(keys, ours, expected, p0):
  du = np.concatenate([(ours[k] - expected[k]).ravel() for k in keys])
  u = np.concatenate([(expected[k] - p0[k]).ravel() for k in keys])
  return np.linalg.norm(du) / np.linalg.norm(u)


def test_bn_running_stats_after_step2_match_official(golden, run):
  """README check 9."""
  expected, _, p0, *_ = golden
  keys = [k for k in p0 if k.endswith((".running_mean", ".running_var"))]
  assert len(keys) == 252
  assert _relative_update_error(keys, run["state2"], expected, p0) <= 0.2


def test_params_after_step2_match_official(golden, run):
  """README check 10."""
  expected, _, p0, *_ = golden
  keys = [str(k) for k in expected["param_keys"]]
  assert _relative_update_error(keys, run["state2"], expected, p0) <= 0.35


def test_step_count_matches_official_batches_tracked(golden, run):
  """README check 11. No num_batches_tracked buffer here (momentum is set, torch ignores it);
  the step counts."""
  raw = torch_checkpoint.load(shared_path("golden", "hrnet_small_random.pth"))["state_dict"]
  start = int(raw["module.bn1.num_batches_tracked"])
  assert start + run["step"] == int(golden[0]["bn1.num_batches_tracked"]) == 5
