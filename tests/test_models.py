"""HRNet model: matches the official PyTorch forward (golden), BN semantics, resizing, presets."""

import collections
import csv
import functools
import re

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path

from mseg_jax import models
from mseg_jax.models import hrnet, winograd
from mseg_jax.models.hrnet import conv_after_gradient, materialize

SIZES = ("65x65", "73x105")
# XLA's backend optimizations change no math but triple W48 compile time on 2 cores; the
# converter check (tests/test_converter.py) and the benchmark run fully optimized.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(autouse=True)
def _full_precision():
  """fp32 convolutions and matmuls in full fp32: a GPU's default is TF32, and the checks here
  compare fp32 results to 1e-5 (on CPU this changes nothing)."""
  with jax.default_matmul_precision("highest"):
    yield


def nhwc(a: np.ndarray) -> np.ndarray:
  return a.transpose(0, 2, 3, 1)


def relative_error(ours, ref) -> float:
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def run_golden(model, variables, size: str):
  """Logits and intermediates for the golden input at `size`, one compile."""
  x = nhwc(np.load(shared_path("golden", f"input_{size}.npy")))
  forward = jax.jit(
    lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]),
    compiler_options=FAST_COMPILE,
  )
  logits, state = forward(variables, x)
  return np.asarray(logits), {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}


def assert_matches_golden(prefix: str, logits, intermediates, size: str, rtol: float):
  ref = nhwc(np.load(shared_path("golden", f"{prefix}_output_{size}.npy")))
  assert logits.shape == ref.shape and logits.dtype == np.float32
  assert relative_error(logits, ref) <= rtol
  assert (logits.argmax(-1) == ref.argmax(-1)).mean() >= 0.999
  golden = np.load(shared_path("golden", f"{prefix}_intermediates_{size}.npz"))
  assert set(golden.files) <= set(intermediates)
  for key in golden.files:
    assert intermediates[key].shape == nhwc(golden[key]).shape, key
    assert relative_error(intermediates[key], nhwc(golden[key])) <= rtol, key
  quarter = nhwc(np.load(shared_path("golden", f"{prefix}_logits_quarter_{size}.npy")))
  assert relative_error(intermediates["logits_quarter"], quarter) <= rtol


# --- Small golden model, converted from the official .pth -----------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_small_golden_outputs_and_intermediates(golden_small, size):
  model, variables = golden_small
  logits, intermediates = run_golden(model, variables, size)
  assert_matches_golden("hrnet_small", logits, intermediates, size, rtol=1e-4)


def test_return_quarter_gives_the_last_layer_logits(golden_small):
  model, variables = golden_small
  x = nhwc(np.load(shared_path("golden", "input_73x105.npy")))
  quarter = jax.jit(
    lambda v, x: model.apply(v, x, train=False, return_quarter=True), compiler_options=FAST_COMPILE
  )(variables, x)
  ref = nhwc(np.load(shared_path("golden", "hrnet_small_logits_quarter_73x105.npy")))
  assert quarter.shape == ref.shape == (1, 19, 27, 194)
  assert relative_error(quarter, ref) <= 1e-4


def test_folded_batch_norm_gives_the_same_logits_and_refuses_training(golden_small):
  model, variables = golden_small
  folded_model, folded = models.fold_batch_norm(model, variables)
  assert folded.keys() == {"params"}
  assert all("kernel" in leaves and "bias" in leaves for leaves in folded["params"].values())
  x = nhwc(np.load(shared_path("golden", "input_73x105.npy")))
  logits = jax.jit(folded_model.apply, compiler_options=FAST_COMPILE)(folded, x)
  ref = nhwc(np.load(shared_path("golden", "hrnet_small_output_73x105.npy")))
  assert relative_error(logits, ref) <= 1e-4
  with pytest.raises(ValueError, match="inference-only"):
    folded_model.apply(folded, x, train=True)


def test_bf16_compute_keeps_fp32_params_and_logits_at_any_size(golden_small):
  model, variables = golden_small
  x = jax.random.normal(jax.random.key(0), (2, 30, 44, 3))  # (H-1) % 8 != 0 is fine
  bf16_model = models.HRNet(config=model.config, dtype=jnp.bfloat16)
  fp32, bf16 = jax.jit(
    lambda v, x: (model.apply(v, x), bf16_model.apply(v, x)), compiler_options=FAST_COMPILE
  )(variables, x)
  assert fp32.shape == bf16.shape == (2, 30, 44, 194)
  assert bf16.dtype == jnp.float32
  assert relative_error(bf16, np.asarray(fp32)) < 0.1
  assert (np.asarray(bf16).argmax(-1) == np.asarray(fp32).argmax(-1)).mean() > 0.8


def test_materialize_is_an_exact_identity_with_identity_gradient():
  x = jnp.array([0.0, -0.0, 1.5, -3e38, 3e38, 2e-38, jnp.inf, -jnp.inf, jnp.nan])
  y = materialize(x)
  np.testing.assert_array_equal(np.asarray(y).view(np.uint32), np.asarray(x).view(np.uint32))
  np.testing.assert_array_equal(jax.grad(lambda x: materialize(x[:6]).sum())(x)[:6], 1.0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a property of XLA:CPU's fusion")
@pytest.mark.parametrize("train", [False, True])
def test_cpu_forward_computes_each_sum_once(train):
  # Without `materialize`, XLA:CPU recomputes the residual/fuse sums inside every later sum:
  # the small model's early conv results are then read by 16 (eval) or 18 (train) fusions.
  model = models.HRNet(models.preset("small"))
  x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"]))
  hlo = forward.lower(variables, x).compile(models.compiler_options()).as_text()
  entry = hlo[hlo.index("ENTRY") :].splitlines()
  convs = {line.split("=")[0].strip().lstrip("%") for line in entry if " convolution(" in line}
  reads = collections.Counter()
  for line in entry:
    if "=" in line and "(" in line:
      operands = line.split("(", 1)[1].split(")")[0]
      reads.update(name for name in re.findall(r"[\w.\-]+", operands) if name in convs)
  assert len(convs) > 90
  assert max(reads[c] for c in convs) <= (4 if train else 2)  # BN batch stats read it too


# --- W48 golden: weights regenerated with numpy from the manifest --------------------------


def regenerate_golden_state_dict(prefix: str) -> dict[str, np.ndarray]:
  """A golden state_dict ("hrnet_w48", "pspnet50"): parameters from the README's RandomState(0)
  spec, BN stats from `{prefix}_bnstats.npz`; checked against `{prefix}_param_checksums.tsv`."""
  with open(shared_path("golden", f"{prefix}_manifest.tsv")) as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  rs = np.random.RandomState(0)
  state_dict = {}
  for row in rows:
    if row["kind"] != "parameter":
      continue
    shape = tuple(int(n) for n in row["shape"].split(","))
    name = row["key"].rsplit(".", 1)[1]
    if row["module_type"] == "Conv2d" and name == "weight":
      o, i, kh, kw = shape
      w = rs.standard_normal(shape) * np.sqrt(2 / (i * kh * kw))
      w *= np.exp(rs.uniform(np.log(0.25), np.log(4.0), size=o))[:, None, None, None]
    elif row["module_type"] == "Conv2d":
      w = rs.uniform(-0.1, 0.1, shape)
    elif name == "weight":
      w = rs.uniform(0.5, 1.5, shape)
    else:
      w = rs.uniform(-0.25, 0.25, shape)
    state_dict[row["key"]] = w.astype(np.float32)
  stats = np.load(shared_path("golden", f"{prefix}_bnstats.npz"))
  state_dict.update({k: stats[k] for k in stats.files})
  with open(shared_path("golden", f"{prefix}_param_checksums.tsv")) as f:
    for row in csv.DictReader(f, delimiter="\t"):
      w = state_dict[row["key"]].astype(np.float64)
      assert w.flat[0] == float(row["first"]) and w.flat[-1] == float(row["last"]), row["key"]
      np.testing.assert_allclose(np.abs(w).sum(), float(row["sum_abs"]), rtol=1e-9)
  return state_dict


@pytest.fixture(scope="module")
def w48():
  # checkpoint_state_dict drops num_batches_tracked
  state_dict = models.checkpoint_state_dict(regenerate_golden_state_dict("hrnet_w48"))
  config = models.infer_config(state_dict)
  assert config == models.preset("hrnet_w48")
  return models.HRNet(config=config), models.state_dict_to_variables(state_dict, config)


def test_w48_parameter_count_is_the_released_model(w48):
  _, variables = w48
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == 65_985_554


@pytest.mark.parametrize("size", SIZES)
def test_w48_golden_outputs_and_intermediates(w48, size):
  model, variables = w48
  logits, intermediates = run_golden(model, variables, size)
  assert_matches_golden("hrnet_w48", logits, intermediates, size, rtol=2e-4)


# --- Building blocks ------------------------------------------------------------------------


def test_presets_and_config_json_round_trip():
  w48 = models.preset("hrnet_w48")
  assert w48.stage_widths[-1] == (48, 96, 192, 384) and w48.head_width == 720
  assert w48.stage_modules == (1, 4, 3) and w48.stage1_blocks == 4
  assert models.preset("hrnet_w18").stage_widths[-1] == (18, 36, 72, 144)
  assert models.preset("hrnet_w32", num_classes=19).stage_widths[-1] == (32, 64, 128, 256)
  assert models.preset("small").stage_modules == (1, 2, 2)
  for name in ("hrnet_w48", "hrnet_w32", "hrnet_w18", "small"):
    config = models.preset(name, num_classes=7)
    assert models.HRNetConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="unknown HRNet preset"):
    models.preset("hrnet_w64")
  with pytest.raises(ValueError, match="stage 3 must have 3 branches"):
    models.HRNetConfig(stage_widths=((48, 96), (48, 96), (48, 96, 192, 384)))


def test_batchnorm_train_step_follows_pytorch():
  x = jax.random.normal(jax.random.key(1), (2, 3, 3, 4)) * 3 + 1  # n = 18 per channel
  bn = models.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=False)
  variables = {
    "params": {"scale": jnp.full(4, 2.0), "bias": jnp.full(4, 0.5)},
    "batch_stats": {"mean": jnp.full(4, 0.3), "var": jnp.full(4, 1.7)},
  }
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  xs = np.asarray(x, np.float64).reshape(-1, 4)
  mean, biased = xs.mean(0), xs.var(0)
  expected = (np.asarray(x) - mean) / np.sqrt(biased + 1e-5) * 2.0 + 0.5
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  stats = updates["batch_stats"]
  np.testing.assert_allclose(stats["mean"], 0.99 * 0.3 + 0.01 * mean, rtol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.99 * 1.7 + 0.01 * biased * 18 / 17, rtol=1e-6)
  y_eval = bn.apply(variables, x, train=False)
  np.testing.assert_allclose(
    y_eval, (np.asarray(x) - 0.3) / np.sqrt(1.7 + 1e-5) * 2 + 0.5, rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  "stride, dilation, kernel, channels",
  [
    (1, 1, 3, (4, 5)),
    (2, 1, 3, (4, 5)),
    (1, 2, 3, (4, 5)),
    (1, 1, 1, (4, 5)),
    (1, 1, 1, (6, 3)),  # fewer output channels: the 1x1 kernel gradient swaps its operands
    (2, 1, 1, (6, 3)),
    (2, 1, 3, (6, 3)),
  ],
)
def test_conv_after_gradient_has_the_values_and_gradients_of_the_plain_conv(
  stride, dilation, kernel, channels
):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, channels[0])), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, *channels)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 9, 11, channels[1])), jnp.float32)
  pad = dilation * (kernel // 2)

  def conv(fn, x, w):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    y = fn(x, w, (stride, stride), [(pad, pad)] * 2, None, (dilation, dilation), dn)
    return jnp.sum(y * g[:, : y.shape[1], : y.shape[2]])

  plain = functools.partial(conv, jax.lax.conv_general_dilated)
  late = functools.partial(conv, conv_after_gradient)
  np.testing.assert_allclose(late(x, w), plain(x, w), rtol=1e-6)
  for a, b in zip(jax.grad(late, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(7, 10), (8, 8), (1, 1), (2, 5)])
def test_winograd_conv3x3_is_the_padded_3x3_convolution_with_its_gradients(size):
  """Odd sizes leave part of the last 2x2 output tiles outside the image."""
  rng = np.random.default_rng(size[0])
  x = jnp.asarray(rng.normal(size=(2, *size, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, 7)), jnp.float32)
  y, vjp = jax.vjp(
    lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    ),
    x,
    w,
  )
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  np.testing.assert_allclose(winograd.conv3x3(x, w), y, rtol=1e-5, atol=1e-5)
  for ours, ref in zip(winograd.conv3x3_gradients(x, w, g), vjp(g), strict=True):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=5e-5)


def _convolutions_in(fn, *args) -> int:
  return jax.jit(fn).lower(*args).as_text().count("stablehlo.convolution")


@pytest.mark.parametrize(
  "stride, dtype, channels, winograd_convs",
  [
    (1, jnp.float32, 6, True),
    (1, jnp.float32, 5, False),  # below WINOGRAD_MIN_CHANNELS (6 here) on one side
    (2, jnp.float32, 6, False),
    (1, jnp.bfloat16, 6, False),
  ],
)
def test_conv_after_gradient_computes_wide_fp32_3x3_convs_as_winograd_products(
  monkeypatch, stride, dtype, channels, winograd_convs
):
  """Such a convolution, alone (inference) or with both gradients (the train step), is matrix
  products, with the plain convolution's values and gradients."""
  monkeypatch.setattr(hrnet, "WINOGRAD_MIN_CHANNELS", 6)
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 6)), dtype)
  w = jnp.asarray(rng.normal(size=(3, 3, 6, channels)), dtype)
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

  def loss(fn, x, w):
    y = fn(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dn)
    return jnp.sum(y.astype(jnp.float32) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

  late = functools.partial(loss, conv_after_gradient)
  plain = functools.partial(loss, jax.lax.conv_general_dilated)
  grad = jax.value_and_grad(late, (0, 1))
  assert (_convolutions_in(grad, x, w) == 0) == winograd_convs
  assert _convolutions_in(late, x, w) == (0 if winograd_convs else 1)
  (value, grads), (ref_value, ref_grads) = grad(x, w), jax.value_and_grad(plain, (0, 1))(x, w)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(value, ref_value, rtol=tol)
  for a, b in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 10
    )


@pytest.mark.parametrize(
  "kernel,stride,pad,size,dilation",
  [
    (1, 1, 0, (7, 10), 1),
    (3, 1, 1, (7, 10), 1),
    (5, 1, 2, (7, 10), 1),
    (3, 2, 1, (7, 10), 1),  # odd rows: the last phase row is padding
    (3, 2, 1, (8, 11), 1),
    (1, 2, 0, (7, 10), 1),
    (5, 2, 2, (9, 6), 1),
    (4, 2, 1, (9, 8), 1),  # even kernels and other paddings follow the same rule
    (2, 1, 0, (7, 10), 1),
    (3, 1, 2, (7, 10), 2),  # PSPNet's layer3
    (3, 1, 4, (9, 8), 4),  # PSPNet's layer4
    (3, 1, 1, (9, 10), 3),  # less padding than reach: the output shrinks
  ],
)
def test_flat_kernel_gradient_is_the_convolutions_kernel_gradient(
  kernel, stride, pad, size, dilation
):
  """The flat-row matrix products that conv_after_gradient uses for stride-1 (dilated too) and
  stride-2 convs."""
  rng = np.random.default_rng(kernel + stride)
  x = jnp.asarray(rng.normal(size=(3, *size, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 6)), jnp.float32)
  numbers = ("NHWC", "HWIO", "NHWC")
  padding = ((pad, pad), (pad, pad))
  conv = functools.partial(
    jax.lax.conv_general_dilated,
    window_strides=(stride, stride),
    padding=padding,
    rhs_dilation=(dilation, dilation),
  )
  y, vjp = jax.vjp(lambda k: conv(x, k, dimension_numbers=numbers), w)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  params = (
    (stride, stride),
    padding,
    None,
    (dilation, dilation),
    jax.lax.conv_dimension_numbers(x.shape, w.shape, numbers),
    1,
    None,
  )
  assert hrnet._has_flat_kernel_gradient(params, w.shape)
  got = hrnet._flat_kernel_gradient(x, g, w.shape, stride, padding, None, dilation)
  np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  "kernel,pad,size",
  [
    (3, 1, (7, 10)),  # odd rows: the last phase row is padding
    (3, 1, (8, 11)),
    (3, 0, (9, 9)),  # the taps never read the last column
    (1, 0, (7, 10)),  # only phase (0, 0) is read
    (5, 2, (9, 6)),
    (4, 1, (9, 8)),
  ],
)
def test_phase_conv_is_the_stride_2_convolution_with_its_input_gradient(kernel, pad, size):
  """The stride-2 convolution that conv_after_gradient differentiates for the input gradient."""
  rng = np.random.default_rng(kernel + pad)
  x = jnp.asarray(rng.normal(size=(3, *size, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 6)), jnp.float32)
  padding = ((pad, pad), (pad, pad))
  numbers = ("NHWC", "HWIO", "NHWC")
  y, vjp = jax.vjp(
    lambda x: jax.lax.conv_general_dilated(x, w, (2, 2), padding, dimension_numbers=numbers), x
  )
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  got, got_vjp = jax.vjp(lambda x: hrnet._phase_conv(x, w, padding, y.shape[1:3], None), x)
  np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_vjp(g)[0], vjp(g)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, kernel, dilation", [(1, 3, 1), (2, 3, 1), (1, 5, 1), (1, 3, 2)])
def test_conv_after_gradient_backward_in_a_loop_convolves_with_hwio_kernels(
  stride, kernel, dilation
):
  """MGDA's per-dataset backward and micro-batches differentiate inside a loop, where XLA:CPU
  leaves a transposed-kernel (HWOI) convolution as slow generic code: every convolution of the
  compiled loop must read its kernel as HWIO, and the gradients stay those of the plain conv."""
  rng = np.random.default_rng(stride + kernel)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 5)), jnp.float32)
  padding = [(dilation * (kernel // 2), dilation * (kernel // 2))] * 2
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

  def gradients(fn, x, w):
    y, vjp = jax.vjp(
      lambda x, w: fn(
        x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=dn
      ),
      x,
      w,
    )
    cotangents = jnp.stack([jnp.cos(jnp.arange(y.size)), jnp.sin(jnp.arange(y.size))])
    return jax.lax.map(lambda g: vjp(g.reshape(y.shape)), cotangents)

  late = jax.jit(functools.partial(gradients, conv_after_gradient))
  hlo = late.lower(x, w).compile(models.compiler_options()).as_text()
  labels = re.findall(r"convolution\(.*dim_labels=(\S+?),", hlo)
  assert labels and set(labels) == {"b01f_01io->b01f"}, collections.Counter(labels)
  for a, b in zip(late(x, w), gradients(jax.lax.conv_general_dilated, x, w), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mask", [None, (1, 0, 1)])
def test_batchnorm_hand_written_gradient_equals_autodiff_of_the_formula(mask):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, (3, 4, 5, 6)), jnp.float32)
  dy = jnp.asarray(rng.normal(0, 1, x.shape), jnp.float32)
  params = {"scale": jnp.asarray(rng.uniform(0.5, 2, 6)), "bias": jnp.asarray(rng.normal(0, 1, 6))}
  stats = {"mean": jnp.zeros(6), "var": jnp.ones(6)}
  rows = jnp.ones(3) if mask is None else jnp.asarray(mask, jnp.float32)
  mask = None if mask is None else jnp.asarray(mask, bool)

  def ours(x, params):
    y, _ = models.BatchNorm().apply(
      {"params": params, "batch_stats": stats}, x, True, mask, mutable=["batch_stats"]
    )
    return jnp.sum(y * dy)

  def formula(x, params):
    w = rows[:, None, None, None]
    n = jnp.sum(rows) * 4 * 5
    mean = jnp.sum(x * w, axis=(0, 1, 2)) / n
    var = jnp.sum(jnp.square(x - mean) * w, axis=(0, 1, 2)) / n
    y = (x - mean) / jnp.sqrt(var + 1e-5) * params["scale"] + params["bias"]
    return jnp.sum(y * dy)

  got, want = jax.grad(ours, (0, 1))(x, params), jax.grad(formula, (0, 1))(x, params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "in_hw, out_hw", [((7, 9), (23, 31)), ((45, 60), (17, 22)), ((10, 10), (5, 20)), ((6, 8), (6, 8))]
)
def test_resize_half_pixel_matches_cv2_up_and_down(in_hw, out_hw):
  image = np.random.RandomState(0).uniform(0, 255, (*in_hw, 3)).astype(np.float32)
  ours = models.resize_bilinear(image[None], out_hw, align_corners=False)[0]
  ref = cv2.resize(image, out_hw[::-1], interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(ours, ref, atol=2e-3)


@pytest.mark.parametrize(
  "in_hw, out_hw", [((5, 7), (17, 25)), ((19, 27), (73, 105)), ((9, 9), (3, 5)), ((4, 6), (1, 1))]
)
def test_resize_align_corners_keeps_corners_and_linear_ramps(in_hw, out_hw):
  (h, w), (oh, ow) = in_hw, out_hw
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  ramp = (3.0 * yy - 2.0 * xx + 1.0).astype(np.float32)[None, :, :, None]
  ours = np.asarray(models.resize_bilinear(ramp, out_hw, align_corners=True))[0, :, :, 0]
  oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
  sy = oy * (h - 1) / max(oh - 1, 1)
  sx = ox * (w - 1) / max(ow - 1, 1)
  np.testing.assert_allclose(ours, 3 * sy - 2 * sx + 1, atol=1e-4)
  assert ours[0, 0] == ramp[0, 0, 0, 0]
  if oh > 1 and ow > 1:
    assert ours[-1, -1] == pytest.approx(ramp[0, -1, -1, 0], abs=1e-5)
