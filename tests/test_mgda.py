"""MGDA: the min-norm solver (hand-solved cases, its properties) and the MGDA train step."""

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import run_on_simulated_devices, shared_path
from flax import linen as nn

from configs import mseg_mgda
from mseg_jax import mgda, train

solve = jax.jit(mgda.min_norm_weights)  # compiled once per number of tasks


def _weights(vectors, valid=None) -> np.ndarray:
  g = np.asarray(vectors, np.float64)
  valid = np.ones(len(g), bool) if valid is None else valid
  return np.asarray(solve(jnp.asarray(g @ g.T, jnp.float32), valid))


def _reference_min_norm(g: np.ndarray) -> float:
  """min |w @ g|^2 over the simplex, by hand: the KKT system on every support (float64)."""
  gram, best = g @ g.T, np.inf
  for size in range(1, len(g) + 1):
    for support in itertools.combinations(range(len(g)), size):
      s = list(support)
      kkt = np.block([[gram[np.ix_(s, s)], -np.ones((size, 1))], [np.ones((1, size)), 0]])
      solution = np.linalg.lstsq(kkt, np.r_[np.zeros(size), 1.0], rcond=None)[0]
      if (solution[:size] >= -1e-12).all():
        w = np.zeros(len(g))
        w[s] = solution[:size]
        best = min(best, float(w @ gram @ w))
  return best


@pytest.mark.parametrize(
  "vectors,expected",
  [
    ([[1, 0], [0, 1]], [0.5, 0.5]),  # orthogonal, equal norms
    ([[1, 0], [0, 2]], [0.8, 0.2]),  # orthogonal: w ~ 1 / |g|^2
    ([[1, 0], [-1, 1]], [0.6, 0.4]),  # obtuse: w @ g = (0.2, 0.4) is orthogonal to g1 - g2
    ([[1, 0], [-3, 0]], [0.75, 0.25]),  # opposite: the origin
    ([[1, 0], [1, 1]], [0.999, 0.001]),  # g1 is the closest point: the official clamp
    ([[1, 1], [1, 0]], [0.001, 0.999]),  # g2 is
    ([[1, 0], [2, 0]], [0.999, 0.001]),  # parallel
  ],
)
def test_two_tasks_match_the_analytic_solution(vectors, expected):
  np.testing.assert_allclose(_weights(vectors), expected, atol=1e-6)


@pytest.mark.parametrize(
  "vectors,expected",
  [
    ([[1, 0, 0], [0, 2, 0], [0, 0, 2]], [2 / 3, 1 / 6, 1 / 6]),  # orthogonal: w ~ 1 / |g|^2
    ([[1, 0], [0, 1], [-1, -1]], [1 / 3, 1 / 3, 1 / 3]),  # the origin is their mean
    ([[1, 0], [0, 1], [2, 2]], [0.5, 0.5, 0.0]),  # the third is beyond the best pair's segment
    ([[2, 2], [1, 0], [0, 1]], [0.0, 0.5, 0.5]),
  ],
)
def test_three_tasks_match_hand_solutions(vectors, expected):
  np.testing.assert_allclose(_weights(vectors), expected, atol=2e-3)


@pytest.mark.parametrize("num", [3, 4, 5, 7])
def test_weights_are_convex_and_give_the_min_norm_point(num):
  rng = np.random.default_rng(num)
  for _ in range(5):
    # a shared component makes the hull's min-norm point lie on a face, not at the origin
    g = rng.normal(size=(num, 12)) + rng.normal(size=12) * rng.uniform(0, 3)
    w = _weights(g)
    assert (w >= 0).all() and abs(w.sum() - 1) < 1e-6
    point, best = w @ g, _reference_min_norm(g)
    assert point @ point <= best + 1e-3 * (g**2).sum(1).max()
    # optimality: no task gradient points below the min-norm point's level set
    assert (g @ point >= point @ point - 1e-3 * (g**2).sum(1).max()).all()


def test_weights_do_not_depend_on_the_gradients_scale():
  g = np.random.default_rng(0).normal(size=(4, 6))
  gram = g @ g.T
  valid = np.ones(4, bool)
  reference = solve(jnp.asarray(gram, jnp.float32), valid)
  for scale in (1e-30, 1e30):
    np.testing.assert_allclose(
      solve(jnp.asarray(gram * scale, jnp.float32), valid), reference, atol=1e-6
    )


def test_invalid_tasks_get_no_weight():
  g = [[1, 0, 0], [0, 2, 0], [5, 5, 5], [0, 0, 2]]
  np.testing.assert_allclose(
    _weights(g, np.array([1, 1, 0, 1], bool)), [2 / 3, 1 / 6, 0, 1 / 6], atol=2e-3
  )
  np.testing.assert_array_equal(_weights(g, np.array([0, 0, 1, 0], bool)), [0, 0, 1, 0])
  np.testing.assert_array_equal(_weights(g, np.zeros(4, bool)), [0, 0, 0, 0])
  np.testing.assert_array_equal(_weights([[3, 4]]), [1])


@pytest.mark.parametrize(
  "normalization,losses,expected",
  [
    ("none", [1.0, 2.0], [0.8, 0.2]),
    ("l2", [1.0, 2.0], [0.5, 0.5]),  # unit gradients
    ("loss", [1.0, 2.0], [0.5, 0.5]),  # g2 / 2 = (0, 1)
    ("loss+", [1.0, 0.5], [0.8, 0.2]),  # g / (loss |g|) = g / 1
  ],
)
def test_normalization_scales_the_gradients_for_the_solver(normalization, losses, expected):
  task_grads = {"a": jnp.array([[1.0], [0.0]]), "b": jnp.array([[0.0, 0.0], [0.0, 2.0]])}
  w = mgda.task_weights(task_grads, jnp.array(losses), jnp.ones(2, bool), normalization)
  np.testing.assert_allclose(w, expected, atol=1e-6)


def test_unknown_normalization_is_an_error():
  with pytest.raises(ValueError, match="'l1'"):
    mgda.task_weights({"a": jnp.eye(2)}, jnp.ones(2), jnp.ones(2, bool), "l1")


def test_gram_and_combine_treat_the_pytree_as_one_flat_vector():
  rng = np.random.default_rng(0)
  tree = {"a": rng.normal(size=(3, 2, 4)), "b": [rng.normal(size=(3, 5))]}
  flat = np.concatenate([tree["a"].reshape(3, -1), tree["b"][0]], axis=1)
  np.testing.assert_allclose(mgda.gram_matrix(tree), flat @ flat.T, rtol=1e-5)
  w = np.array([0.2, 0.5, 0.3])
  combined = mgda.combine(jax.tree.map(jnp.asarray, tree), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(combined["a"], np.tensordot(w, tree["a"], 1), rtol=1e-5)
  np.testing.assert_allclose(combined["b"][0], w @ tree["b"][0], rtol=1e-5)


def _tiny_batch(num_crops: int, datasets: list[int], size: int = 17):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (num_crops, size, size)).astype(np.uint8)
  labels[:, :2] = 255
  return {
    "image": rng.integers(0, 256, (num_crops, size, size, 3)).astype(np.uint8),
    "label": labels,
    "dataset": np.asarray(datasets, np.int32),
  }


class ConvBN(nn.Module):
  """A stand-in for HRNet in the step: conv, BatchNorm over the batch, conv to 5 logits."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(6, (3, 3), dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Conv(5, (1, 1), dtype=self.dtype)(x)


@pytest.mark.parametrize("tasks_per_pass", [1, 2, 0])
def test_mgda_gradient_combines_each_datasets_own_gradient(tasks_per_pass):
  """One forward; the gradient is sum_t w_t d loss_t / d params with the solver's weights of
  those gradients (dataset 3, absent, gets weight 0); loss and BN statistics as the plain step."""
  model = ConvBN()
  luts = np.stack([(np.arange(256) + k) % 5 for k in range(4)]).astype(np.uint8)
  luts[:, 255] = 255
  batch = jax.tree.map(jnp.asarray, _tiny_batch(6, [0, 1, 2, 0, 1, 2], size=9))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 9, 9, 3)))
  args = (variables["params"], variables["batch_stats"], batch)
  forward = functools.partial(train.forward_loss, model=model, luts=luts)
  (loss, (stats, dataset_metrics)), _ = jax.value_and_grad(forward, has_aux=True)(*args)
  grads = [
    jax.grad(lambda p, t=t: forward(p, *args[1:])[1][1]["dataset_loss"][t])(args[0])
    for t in range(3)
  ]  # each dataset's own loss
  flat = np.stack([np.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in grads])
  flat = np.concatenate([flat, np.zeros_like(flat[:1])]).astype(np.float64)  # dataset 3
  expected_w = np.asarray(
    solve(jnp.asarray(flat @ flat.T, jnp.float32), np.array([1, 1, 1, 0], bool))
  )

  (m_loss, (m_stats, m_metrics)), m_grads = jax.jit(
    functools.partial(
      train.mgda_value_and_grad,
      model=model,
      luts=luts,
      normalization="none",
      tasks_per_pass=tasks_per_pass,
    )
  )(*args)
  np.testing.assert_allclose(m_loss, loss, rtol=1e-6)
  w = m_metrics["mgda_weights"]
  np.testing.assert_allclose(m_metrics["dataset_loss"], dataset_metrics["dataset_loss"], rtol=1e-6)
  np.testing.assert_allclose(m_metrics["dataset_pixel_acc"], dataset_metrics["dataset_pixel_acc"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), m_stats, stats)
  assert w[3] == 0 and 0 < w[:3].min() and abs(float(w.sum()) - 1) < 1e-6
  np.testing.assert_allclose(w, expected_w, atol=1e-4)
  m_flat = np.concatenate([x.ravel() for x in jax.tree.leaves(m_grads)])
  expected = np.asarray(w, np.float64) @ flat
  np.testing.assert_allclose(m_flat, expected, atol=1e-5 * np.abs(expected).max())
  # the MGDA direction is not the plain mean of the datasets' gradients
  assert np.abs(m_flat - flat[:3].mean(0)).max() > 1e-3 * np.abs(expected).max()


CHILD = r"""
import functools, sys
import jax, jax.numpy as jnp, ml_collections, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from mseg_jax import models, train

assert jax.device_count() == 4, jax.devices()
config = models.HRNetConfig(num_classes=5, stage1_blocks=1, stage1_planes=8,
                            stage_modules=(1, 1, 1), stage_blocks=((1, 1), (1, 1, 1), (1, 1, 1, 1)),
                            stage_widths=((4, 8), (4, 8, 16), (4, 8, 16, 32)))
model = models.HRNet(config=config)
optim = ml_collections.ConfigDict(dict(base_lr=0.1, momentum=0.9, weight_decay=1e-4, power=0.9))
tx, schedule = train.create_optimizer(optim, 100)
luts = np.stack([(np.arange(256) + k) % 5 for k in range(4)]).astype(np.uint8)
luts[:, 255] = 255
rng = np.random.default_rng(0)
labels = rng.integers(0, 5, (8, 25, 25)).astype(np.uint8)
labels[:, :2] = 255
images = rng.integers(0, 256, (8, 25, 25, 3)) * np.linspace(0.2, 1, 8)[:, None, None, None]
host = {"image": images.astype(np.uint8), "label": labels,
        "dataset": np.array([0, 0, 1, 1, 2, 2, 0, 1], np.int32)}  # dataset 3 absent
variables = jax.device_get(jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(0), jnp.zeros((1, 25, 25, 3))))
out = {}
for n in (1, 4):
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])
  with jax.set_mesh(mesh):
    repl = NamedSharding(mesh, P())
    state = jax.device_put(train.init_state(model, tx, None, variables), repl)
    batch = train.global_batch(host, NamedSharding(mesh, P("data")))
    assert len(batch["image"].sharding.device_set) == n
    step = jax.jit(functools.partial(
        train.train_step, model=model, luts=luts, tx=tx, schedule=schedule,
        mgda_options=dict(normalization="none", tasks_per_pass=1)),
        donate_argnums=0, out_shardings=repl)
    for k in range(2):
      state, metrics = step(state, batch)
      out[f"{n}/weights{k}"] = np.asarray(metrics["mgda_weights"])
    flat = jax.tree_util.tree_flatten_with_path(
        jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]}))[0]
    out.update({f"{n}/{jax.tree_util.keystr(k)}": v for k, v in flat})
np.savez(sys.argv[1], **out)
"""


def test_sharded_mgda_step_equals_single_device_step(tmp_path):
  out = tmp_path / "out.npz"
  run_on_simulated_devices(CHILD, 4, out)
  result = np.load(out)
  for k in range(2):
    w = result[f"1/weights{k}"]
    assert w[3] == 0 and (w[:3] > 0).all()
    np.testing.assert_allclose(result[f"4/weights{k}"], w, atol=1e-5)
  keys = [k[2:] for k in result.files if k.startswith("1/") and "weights" not in k]
  assert any("batch_stats" in k for k in keys) and any("params" in k for k in keys)
  for key in keys:
    one, four = result[f"1/{key}"], result[f"4/{key}"]
    assert np.abs(one - four).max() <= 1e-5 * max(1.0, np.abs(one).max()), key


def test_mseg_mgda_config_mirrors_the_official_yaml():
  official = yaml.safe_load(
    shared_path(
      "reference/mseg-semantic/mseg_semantic/config/train/1080_release/mseg-mgda.yaml"
    ).read_text()
  )
  data, recipe = official["DATA"], official["TRAIN"]
  config = mseg_mgda.get_config()
  assert config.mgda.enabled and config.mgda.normalization == "none"
  assert train.train_datasets(config) == tuple(data["dataset"])
  assert config.data.crop_size == recipe["train_h"] == recipe["train_w"]
  assert config.data.short_size == recipe["short_size"]
  assert (config.batch_size, config.num_examples) == (recipe["batch_size"], recipe["num_examples"])
  assert train.total_steps(config) == recipe["num_examples"] // (recipe["batch_size"] // 7)
  for key in ("base_lr", "momentum", "weight_decay", "power"):
    assert config.optim[key] == recipe[key], key
