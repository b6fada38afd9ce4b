"""PSPNet-50: matches the official PyTorch forward in eval and train mode (golden), converts
strictly, trains with its aux loss and 10x head lr, and runs in the Predictor."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import shared_path
from test_models import FAST_COMPILE, nhwc, regenerate_golden_state_dict, relative_error

from configs import pspnet
from mseg_jax import inference, models, train

SIZES = ("65x65", "73x105")
RTOL = 4e-4  # golden README: max|diff| <= 4e-4 * max|ref|, per tensor
AUX_KEY = {"aux_eval_eighth": "aux_eighth"}  # golden name -> ours


def pspnet_config(arg: str = "1080p") -> ml_collections.ConfigDict:
  return pspnet.get_config(arg)


@pytest.fixture(scope="module")
def state_dict():
  return models.checkpoint_state_dict(regenerate_golden_state_dict("pspnet50"))


@pytest.fixture(scope="module")
def pspnet50(state_dict):
  config = models.infer_config(state_dict)
  assert config == models.preset("pspnet50")
  return models.PSPNet(config=config), models.state_dict_to_variables(state_dict, config)


def test_parameter_count_is_the_official_pspnet50(pspnet50):
  _, variables = pspnet50
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == 49_214_788
  assert len(variables["batch_stats"]) == 61


@pytest.mark.parametrize("size", SIZES)
def test_golden_eval_outputs_and_intermediates(pspnet50, size):
  model, variables = pspnet50
  x = nhwc(np.load(shared_path("golden", f"pspnet50_input_{size}.npy")))
  forward = jax.jit(
    lambda v, x: model.apply(v, x, return_aux=True, mutable=["intermediates"]),
    compiler_options=FAST_COMPILE,
  )
  with jax.default_matmul_precision("highest"):  # no TF32 on GPU
    (logits, _), state = forward(variables, x)
  ref = nhwc(np.load(shared_path("golden", f"pspnet50_output_{size}.npy")))
  assert logits.shape == ref.shape and logits.dtype == jnp.float32
  assert relative_error(logits, ref) <= RTOL
  assert (np.asarray(logits).argmax(-1) == ref.argmax(-1)).mean() >= 0.999
  ours = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
  golden = np.load(shared_path("golden", f"pspnet50_intermediates_{size}.npz"))
  assert len(golden.files) == 12
  for key in golden.files:
    got = ours[AUX_KEY.get(key, key)]
    assert got.shape == nhwc(golden[key]).shape, key
    assert relative_error(got, nhwc(golden[key])) <= RTOL, key


def test_golden_train_forward_aux_output_losses_and_bn_updates(pspnet50):
  """The official train forward (Dropout2d off): aux logits, both losses, BN running stats."""
  model, variables = pspnet50
  model = model.clone(config=models.PSPNetConfig(dropout=0.0))
  golden = np.load(shared_path("golden", "pspnet50_train_65x65.npz"), allow_pickle=False)
  labels = golden["labels"]
  dataset = np.zeros(len(labels), np.int32)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def forward(v, x):
    (logits, aux), state = model.apply(
      v, x, train=True, return_aux=True, mutable=["batch_stats", "intermediates"]
    )
    losses = [train.multi_dataset_loss(y, labels, dataset, 1)[0] for y in (logits, aux)]
    return logits, aux, losses, state

  with jax.default_matmul_precision("highest"):
    logits, aux, (main_loss, aux_loss), state = forward(variables, nhwc(golden["images"]))
  ref_aux = nhwc(np.load(shared_path("golden", "pspnet50_aux_train_65x65.npy")))
  assert aux.shape == ref_aux.shape == (2, 65, 65, 194)
  assert relative_error(aux, ref_aux) <= RTOL
  inter = state["intermediates"]
  for key, ours in (("main_logits_eighth", "logits_eighth"), ("aux_logits_eighth", "aux_eighth")):
    assert relative_error(inter[ours][0], nhwc(golden[key])) <= RTOL, key
  assert abs(main_loss - golden["main_loss"]) / golden["main_loss"] <= 2e-5
  assert abs(aux_loss - golden["aux_loss"]) / golden["aux_loss"] <= 2e-5
  assert (np.asarray(logits).argmax(-1) == golden["pred"]).mean() >= 0.999
  before = np.load(shared_path("golden", "pspnet50_bnstats.npz"))
  checked = 0
  for key in golden.files:
    if key.startswith("bn_after/"):
      name, stat = key.removeprefix("bn_after/").rsplit(".", 1)
      got = state["batch_stats"][name]["mean" if stat == "running_mean" else "var"]
      ref, old = golden[key], before[f"{name}.{stat}"]
      bound = 1e-2 * (np.abs(ref - old).max() + 8 * 2**-23 * np.abs(ref).max())
      assert np.abs(np.asarray(got) - ref).max() <= bound, key
      checked += 1
  assert checked == 6


def test_folded_batch_norm_gives_the_golden_logits(pspnet50):
  model, variables = pspnet50
  folded_model, folded = models.fold_batch_norm(model, variables)
  assert folded.keys() == {"params"} and folded_model.bn_folded
  x = nhwc(np.load(shared_path("golden", "pspnet50_input_73x105.npy")))
  with jax.default_matmul_precision("highest"):
    logits = jax.jit(folded_model.apply, compiler_options=FAST_COMPILE)(folded, x)
  ref = nhwc(np.load(shared_path("golden", "pspnet50_output_73x105.npy")))
  assert relative_error(logits, ref) <= RTOL
  with pytest.raises(ValueError, match="inference-only"):
    folded_model.apply(folded, jnp.concatenate([x, x]), train=True)


def test_presets_config_checks_and_json_round_trip():
  config = models.preset("pspnet101", num_classes=19)
  assert (config.layers, config.bins, config.dropout, config.aux_weight) == (
    101,
    (1, 2, 3, 6),
    0.1,
    0.4,
  )
  assert models.PSPNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
  assert models.config_from_dict(config.to_dict(), "pspnet") == config
  assert isinstance(models.build(config), models.PSPNet)
  with pytest.raises(ValueError, match="unknown PSPNet preset 'pspnet34'"):
    models.preset("pspnet34")
  with pytest.raises(ValueError, match="layers must be one of"):
    models.PSPNetConfig(layers=34)
  with pytest.raises(ValueError, match="bins must be positive and their count divide 2048"):
    models.PSPNetConfig(bins=(1, 2, 3))
  with pytest.raises(ValueError, match="unknown architecture 'deeplab'"):
    models.config_from_dict(config.to_dict(), "deeplab")


def test_input_must_satisfy_the_official_assert_and_training_a_batch_of_two():
  model = models.PSPNet(models.preset("pspnet50"))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  with pytest.raises(ValueError, match=r"\(H-1\) % 8 == 0.*got 64x33"):
    jax.eval_shape(model.apply, variables, jnp.zeros((1, 64, 33, 3)))
  with pytest.raises(ValueError, match="batch of at least 2"):
    jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=["batch_stats"]),
      variables,
      jnp.zeros((1, 33, 33, 3)),
    )


def test_adaptive_pooling_uses_the_overlapping_torch_windows():
  x = np.random.RandomState(0).standard_normal((1, 9, 10, 2)).astype(np.float32)
  got = np.asarray(models.pspnet.adaptive_avg_pool(jnp.asarray(x), 6))
  rows = [(0, 2), (1, 3), (3, 5), (4, 6), (6, 8), (7, 9)]  # n = 9 (README)
  cols = [(0, 2), (1, 4), (3, 5), (5, 7), (6, 9), (8, 10)]  # n = 10
  expected = [[x[0, a:b, c:d].mean((0, 1)) for c, d in cols] for a, b in rows]
  np.testing.assert_allclose(got[0], np.array(expected), rtol=1e-5, atol=1e-6)


# --- Conversion and the checkpoint format ---------------------------------------------------


def corrupt_renamed(sd):
  sd["ppm.features.2.conv.weight"] = sd.pop("ppm.features.2.1.weight")
  return ["missing keys (1):\n    ppm.features.2.1.weight", "ppm.features.2.conv.weight"]


def corrupt_missing(sd):
  del sd["aux.1.running_var"]
  return ["missing keys (1):\n    aux.1.running_var"]


def corrupt_reshaped(sd):
  sd["layer3.0.conv2.weight"] = sd["layer3.0.conv2.weight"][:, :, :1]
  return ["layer3.0.conv2.weight: (256, 256, 1, 3), expected (256, 256, 3, 3)"]


@pytest.mark.parametrize("corrupt", [corrupt_renamed, corrupt_missing, corrupt_reshaped])
def test_converter_refuses_mismatched_keys(state_dict, corrupt):
  sd = dict(state_dict)
  expected = corrupt(sd)
  with pytest.raises(models.ConversionError) as error:
    models.state_dict_to_variables(sd, models.infer_config(sd), path="psp.pth")
  assert str(error.value).startswith("psp.pth: state_dict does not match PSPNetConfig")
  for text in expected:
    assert text in str(error.value)


@pytest.mark.parametrize("layers", [50, 101])
def test_depth_and_classes_are_inferred_from_the_keys(layers):
  config = models.preset(f"pspnet{layers}", num_classes=19)
  shapes = models.convert.torch_shapes(config)
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  assert models.infer_config(sd) == config
  assert models.infer_config(sd, num_classes=7) == models.preset(f"pspnet{layers}", 7)
  last = models.pspnet.RESNET_BLOCKS[layers][2] - 1
  sd = {k: v for k, v in sd.items() if not k.startswith(f"layer3.{last}.")}
  with pytest.raises(models.ConversionError, match="cannot infer the PSPNet depth"):
    models.infer_config(sd, path="psp.pth")


def test_too_few_ppm_branches_are_refused():
  shapes = models.convert.torch_shapes(models.preset("pspnet50"))
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  sd = {k: v for k, v in sd.items() if not k.startswith("ppm.features.3.")}
  with pytest.raises(models.ConversionError, match=r"3 PPM branches.*\(1, 2, 3, 6\)"):
    models.infer_config(sd, path="psp.pth")


def test_checkpoint_records_the_architecture_and_old_hrnet_checkpoints_load(
  tmp_path, pspnet50, golden_small, state_dict
):
  model, variables = pspnet50
  models.save_checkpoint(tmp_path / "psp", model.config, variables)
  meta = json.loads((tmp_path / "psp" / "config.json").read_text())
  assert meta["architecture"] == "pspnet"
  loaded, restored = models.load_checkpoint(tmp_path / "psp", dtype=jnp.bfloat16)
  assert isinstance(loaded, models.PSPNet) and loaded.dtype == jnp.bfloat16
  assert loaded.config == model.config
  round_trip = models.variables_to_state_dict(restored)
  assert round_trip.keys() == state_dict.keys()
  for key in ("layer0.0.weight", "ppm.features.3.2.running_var", "aux.4.bias"):
    np.testing.assert_array_equal(round_trip[key], state_dict[key])

  hrnet, hrnet_variables = golden_small
  models.save_checkpoint(tmp_path / "hrnet", hrnet.config, hrnet_variables)
  config_file = tmp_path / "hrnet" / "config.json"
  config_file.write_text(json.dumps({"config": json.loads(config_file.read_text())["config"]}))
  loaded, _ = models.load_checkpoint(tmp_path / "hrnet")
  assert isinstance(loaded, models.HRNet) and loaded.config == hrnet.config


def test_released_wrapping_is_unwrapped(state_dict):
  released = {
    "epoch": 1,
    "state_dict": {f"module.{k}": v for k, v in state_dict.items()}
    | {"module.layer0.1.num_batches_tracked": np.array(3, np.int64)},
    "optimizer": {"state": {}, "param_groups": []},
  }
  unwrapped = models.checkpoint_state_dict(released, "psp.pth")
  assert unwrapped.keys() == state_dict.keys() and len(unwrapped) == 370 - 61


def imagenet_resnet(state_dict):
  """The official PSPNet's backbone as semseg's ImageNet resnet50_v2.pth names it: the deep
  stem as conv1/bn1 .. conv3/bn3, layer1-layer4, and the 1000-way classifier fc."""
  stem = {v: k for k, v in models.convert.RESNET_STEM.items()}
  resnet = {}
  for key, value in state_dict.items():
    if key.startswith(("ppm.", "cls.", "aux.")):
      continue
    prefix = key[: len("layer0.0.")]
    resnet[stem[prefix] + key[len(prefix) :] if prefix in stem else key] = value
  rng = np.random.default_rng(0)
  resnet["fc.weight"] = rng.normal(size=(1000, 2048)).astype(np.float32)
  resnet["fc.bias"] = np.zeros(1000, np.float32)
  return resnet


def test_backbone_only_loads_an_imagenet_deep_stem_resnet_and_a_fresh_head(state_dict):
  resnet = imagenet_resnet(state_dict)
  assert "conv3.weight" in resnet and not any(k.startswith("layer0.") for k in resnet)
  config = models.infer_config(resnet, num_classes=19, path="resnet50_v2.pth")
  assert config == models.preset("pspnet50", num_classes=19)
  variables = models.backbone_to_variables(resnet, config, seed=1, path="resnet50_v2.pth")
  full = models.state_dict_to_variables(state_dict, models.preset("pspnet50"))
  expected = models.convert.abstract_variables(config)
  for collection in ("params", "batch_stats"):
    assert variables[collection].keys() == expected[collection].keys()
    for name, leaves in variables[collection].items():
      for leaf, value in leaves.items():
        assert value.shape == expected[collection][name][leaf].shape, (name, leaf)
        if not name.startswith(("ppm.", "cls.", "aux.")):
          np.testing.assert_array_equal(value, full[collection][name][leaf], err_msg=name)
  np.testing.assert_array_equal(
    variables["params"]["layer0.6"]["kernel"], resnet["conv3.weight"].transpose(2, 3, 1, 0)
  )
  kernel = variables["params"]["cls.0"]["kernel"]  # 3x3, 4096 -> 512: He-normal over fan-out
  assert abs(kernel.std() / np.sqrt(2 / (9 * 512)) - 1) < 0.01
  assert 0 < np.abs(variables["params"]["cls.4"]["bias"]).max() <= 1 / np.sqrt(512)
  np.testing.assert_array_equal(variables["batch_stats"]["ppm.features.0.2"]["var"], np.ones(512))

  # a segmentation PSPNet's backbone loads too; a broken ResNet names what is wrong
  from_pspnet = models.backbone_to_variables(state_dict, config, seed=1)
  assert all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(from_pspnet), jax.tree.leaves(variables), strict=True)
  )
  del resnet["bn2.running_var"]
  resnet["fc2.weight"] = np.zeros(3, np.float32)
  with pytest.raises(models.ConversionError) as error:
    models.backbone_to_variables(resnet, config, path="resnet50_v2.pth")
  assert "resnet50_v2.pth: state_dict does not match PSPNetConfig" in str(error.value)
  assert "layer0.4.running_var" in str(error.value)
  assert "unexpected keys (1):\n    fc2.weight" in str(error.value)


# --- Training and inference -----------------------------------------------------------------


def test_lr_multipliers_scale_the_head_updates_as_torch_param_groups():
  optim = ml_collections.ConfigDict(
    dict(base_lr=0.1, momentum=0.9, weight_decay=0.5, power=1.0, lr_multipliers=dict(cls=10.0))
  )
  tx, _ = train.create_optimizer(optim, max_iter=4)
  params = {"layer4.0.conv2": {"kernel": jnp.array([2.0])}, "cls.4": {"bias": jnp.array([2.0])}}
  grads = jax.tree.map(lambda p: jnp.array([1.0]), params)
  state = tx.init(params)
  for k in range(2):
    updates, state = tx.update(grads, state, params)
    # torch: buf = 0.9 buf + (g + 0.5 p); p -= lr_k * multiplier * buf, lr_k = 0.1 (1 - k/4)
    buf = 2.0 if k == 0 else 0.9 * 2.0 + 2.0
    lr = 0.1 * (1 - k / 4)
    np.testing.assert_allclose(updates["layer4.0.conv2"]["kernel"], [-lr * buf], rtol=1e-6)
    np.testing.assert_allclose(updates["cls.4"]["bias"], [-10 * lr * buf], rtol=1e-6)


def test_pspnet_config_is_mseg_3m_with_the_official_pspnet_parts():
  config = pspnet_config()
  config.data.data_root = "/data"
  with pytest.raises(ValueError, match="'imagenet' needs config.init.checkpoint"):
    train.make_plan(config)
  config.init.checkpoint = "/models/resnet50_imagenet"  # as the official: from ImageNet
  config = train.make_plan(config).to_json()
  assert config["init"]["kind"] == "imagenet"
  assert config["derived"]["architecture"] == "pspnet"
  assert config["derived"]["model"] == models.preset("pspnet50").to_dict()
  assert config["optim"]["lr_multipliers"] == {"ppm": 10.0, "cls": 10.0, "aux": 10.0}
  assert config["data"]["crop_size"] == 713 and config["batch_size"] == 35
  overridden = pspnet_config()
  overridden.model.arch = dict(layers=101)
  assert train.model_config(overridden, 19) == models.preset("pspnet101", num_classes=19)
  overridden.model.arch = dict(stage1_planes=8)  # an HRNet field
  with pytest.raises(ValueError, match=r"\['stage1_planes'\] are not fields of PSPNetConfig"):
    train.model_config(overridden, 19)


def test_one_train_step_adds_the_aux_loss_with_weight_0_4(pspnet50):
  """train_step on the golden train batch (uint8, normalized on device; Dropout2d off): its
  loss is the official main_loss + 0.4 * aux_loss."""
  model, variables = pspnet50
  model = model.clone(config=models.PSPNetConfig(dropout=0.0))
  golden = np.load(shared_path("golden", "pspnet50_train_65x65.npz"), allow_pickle=False)
  tx, schedule = train.create_optimizer(pspnet_config().optim, max_iter=10)
  luts = np.where(np.arange(256) < 194, np.arange(256), 255).astype(np.uint8)[None]
  batch = {
    "image": golden["images_rgb_uint8"],
    "label": golden["labels"].astype(np.uint8),
    "dataset": np.zeros(2, np.int32),
  }
  step = jax.jit(
    functools.partial(train.train_step, model=model, luts=luts, tx=tx, schedule=schedule),
    compiler_options=FAST_COMPILE,
  )
  with jax.default_matmul_precision("highest"):
    state, metrics = step(train.init_state(model, tx, None, variables), batch)
  expected = golden["main_loss"] + 0.4 * golden["aux_loss"]
  assert abs(metrics["loss"] - expected) / expected <= 2e-5
  np.testing.assert_allclose(metrics["dataset_loss"], [metrics["loss"]], rtol=1e-6)
  assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
  assert int(state["step"]) == 1
  params = variables["params"]
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state["params"], params)
  assert moved["aux.4"]["kernel"] > 0 and moved["layer0.0"]["kernel"] > 0


def test_predictor_labels_an_image_and_refuses_a_crop_the_model_cannot_take(pspnet50):
  model, variables = pspnet50
  image = np.load(shared_path("golden", "input_65x65_rgb_uint8.npy"))
  predictor = inference.Predictor(model, variables, base_size=65, crop=65, batch_size=1)
  assert predictor.model.bn_folded
  with jax.default_matmul_precision("highest"):
    probs, labels = predictor.probs(image)
  # official net_process: softmax of the image and its flip, averaged (golden logits for x)
  x = nhwc(np.load(shared_path("golden", "pspnet50_input_65x65.npy")))
  ref = jax.nn.softmax(nhwc(np.load(shared_path("golden", "pspnet50_output_65x65.npy")))[0])
  flipped = jax.jit(model.apply, compiler_options=FAST_COMPILE)(variables, x[:, :, ::-1])
  expected = (ref + jax.nn.softmax(flipped[0])[:, ::-1]) / 2
  assert labels.shape == (65, 65) and labels.dtype == jnp.uint8
  np.testing.assert_allclose(np.asarray(probs), np.asarray(expected), atol=1e-3)
  assert (np.asarray(labels) == np.asarray(expected).argmax(-1)).mean() >= 0.999
  with pytest.raises(ValueError, match="crop - 1 divisible by 8.*crop=64"):
    inference.Predictor(model, variables, crop=64)
