"""Torch-free .pth reading and PyTorch -> Flax conversion: formats, safety, strictness, CLI."""

import csv
import importlib.util
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from conftest import REPO, shared_path

from mseg_jax import models, torch_checkpoint

TOP_LEVEL_KEYS = ["epoch", "state_dict", "optimizer", "current_iter", "max_iter"]


def load_tool():
  spec = importlib.util.spec_from_file_location(
    "convert_torch_weights", REPO / "tools" / "convert_torch_weights.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def checkpoint():
  return torch_checkpoint.load(shared_path("golden", "hrnet_small_random.pth"))


@pytest.fixture(scope="module")
def state_dict(checkpoint):
  return models.checkpoint_state_dict(checkpoint)


def test_zip_and_legacy_formats_hold_the_same_checkpoint(checkpoint):
  legacy_path = shared_path("golden", "hrnet_small_random_legacy.pth")
  assert not zipfile.is_zipfile(legacy_path)
  legacy = torch_checkpoint.load(legacy_path)
  assert list(checkpoint) == list(legacy) == TOP_LEVEL_KEYS
  assert checkpoint["optimizer"] == legacy["optimizer"]
  assert isinstance(legacy["state_dict"], OrderedDict)
  assert list(checkpoint["state_dict"]) == list(legacy["state_dict"])
  assert len(legacy["state_dict"]) == 759
  for key, value in checkpoint["state_dict"].items():
    assert value.dtype == legacy["state_dict"][key].dtype, key
    np.testing.assert_array_equal(value, legacy["state_dict"][key], err_msg=key)
  counter = legacy["state_dict"]["module.bn1.num_batches_tracked"]
  assert counter.dtype == np.int64 and counter.shape == () and counter == 3


def test_tensors_match_the_golden_checksums_and_manifest(checkpoint):
  tensors = checkpoint["state_dict"]
  with open(shared_path("golden", "hrnet_small_manifest.tsv")) as f:
    manifest = list(csv.DictReader(f, delimiter="\t"))
  assert [row["checkpoint_key"] for row in manifest] == list(tensors)
  for row in manifest:
    value = tensors[row["checkpoint_key"]]
    assert value.shape == tuple(int(n) for n in row["shape"].split(",") if n), row["key"]
    assert value.dtype == np.dtype(row["dtype"]), row["key"]
  with open(shared_path("golden", "hrnet_small_param_checksums.tsv")) as f:
    for row in csv.DictReader(f, delimiter="\t"):
      value = tensors["module." + row["key"]].astype(np.float64)
      assert value.flat[0] == float(row["first"]) and value.flat[-1] == float(row["last"])
      np.testing.assert_allclose(np.abs(value).sum(), float(row["sum_abs"]), rtol=1e-9)


# protocol 2: GLOBAL os.system, a 1-tuple with a shell command, REDUCE, STOP.
def evil_pickle(marker) -> bytes:
  command = f"touch {marker}".encode()
  return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_foreign_global_is_refused_without_running_it(tmp_path, container):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  if container == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("evil/data.pkl", evil_pickle(marker))
      archive.writestr("evil/byteorder", "little")
  else:
    path.write_bytes(evil_pickle(marker))
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match=r"os\.system") as error:
    torch_checkpoint.load(path)
  assert str(path) in str(error.value)
  assert not marker.exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
  path = tmp_path / "notes.pth"
  path.write_text("hello")
  with pytest.raises(ValueError, match="neither a torch zip checkpoint nor a legacy"):
    torch_checkpoint.load(path)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    torch_checkpoint.load(tmp_path / "missing.pth")


def test_released_wrapping_and_bare_state_dict_give_the_same_model(checkpoint, state_dict):
  assert len(state_dict) == 759 - 126  # no num_batches_tracked, no "module."
  assert all(not k.startswith("module.") for k in state_dict)
  bare = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
  assert models.checkpoint_state_dict(bare).keys() == state_dict.keys()
  config = models.infer_config(state_dict)
  assert config == models.preset("small")
  variables = models.state_dict_to_variables(state_dict, config)
  round_trip = models.variables_to_state_dict(variables)
  assert round_trip.keys() == state_dict.keys()
  for key, value in state_dict.items():
    np.testing.assert_array_equal(round_trip[key], value, err_msg=key)


FUSE_KEY = "stage3.1.fuse_layers.2.0.1.0.weight"


def renamed(sd):
  sd["stage3.1.fuse_layers.2.0.1.conv.weight"] = sd.pop(FUSE_KEY)
  return [FUSE_KEY, "stage3.1.fuse_layers.2.0.1.conv.weight"]


def missing(sd):
  del sd["layer1.1.bn2.running_var"]
  return ["missing keys (1)", "layer1.1.bn2.running_var"]


def reshaped(sd):
  sd["last_layer.0.weight"] = sd["last_layer.0.weight"][:, :-1]
  return ["wrong shape (1)", "last_layer.0.weight: (270, 269, 1, 1), expected (270, 270, 1, 1)"]


@pytest.mark.parametrize("corrupt", [renamed, missing, reshaped])
def test_mismatched_keys_are_refused_and_listed(state_dict, corrupt):
  sd = dict(state_dict)
  expected_text = corrupt(sd)
  with pytest.raises(models.ConversionError) as error:
    models.state_dict_to_variables(sd, models.infer_config(sd), path="ckpt.pth")
  message = str(error.value)
  assert message.startswith("ckpt.pth: state_dict does not match")
  for text in expected_text:
    assert text in message


def test_renamed_key_is_listed_as_missing_and_unexpected(state_dict):
  sd = dict(state_dict)
  renamed(sd)
  with pytest.raises(models.ConversionError, match=r"missing keys \(1\):\n    stage3") as e:
    models.state_dict_to_variables(sd, models.infer_config(sd))
  assert "unexpected keys (1):\n    stage3.1.fuse_layers.2.0.1.conv.weight" in str(e.value)


def test_architecture_cannot_be_inferred_from_a_foreign_state_dict():
  with pytest.raises(models.ConversionError, match="cannot infer the HRNet architecture"):
    models.infer_config({"fc.weight": np.zeros((3, 4), np.float32)}, path="resnet.pth")


def test_backbone_loads_imagenet_keys_and_ignores_the_classifier(state_dict):
  imagenet = {k: v for k, v in state_dict.items() if not k.startswith("last_layer.")}
  imagenet["incre_modules.0.0.conv1.weight"] = np.zeros((32, 18, 1, 1), np.float32)
  imagenet["final_layer.0.weight"] = np.zeros((2048, 1024, 1, 1), np.float32)
  imagenet["classifier.weight"] = np.zeros((1000, 2048), np.float32)
  config = models.infer_config(imagenet, num_classes=19)
  assert config == models.preset("small", num_classes=19)
  variables = models.backbone_to_variables(imagenet, config, seed=3)
  np.testing.assert_array_equal(
    variables["params"]["conv1"]["kernel"], state_dict["conv1.weight"].transpose(2, 3, 1, 0)
  )
  assert variables.keys() == {"params", "batch_stats"}
  assert variables["params"].keys() == models.convert.abstract_variables(config)["params"].keys()
  head = variables["params"]["last_layer.3"]["kernel"]
  assert head.shape == (1, 1, 270, 19) and 0 < head.std() < 0.01
  np.testing.assert_array_equal(variables["batch_stats"]["last_layer.1"]["var"], np.ones(270))
  del imagenet["layer1.0.downsample.1.running_mean"]
  imagenet["fc.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(models.ConversionError) as error:
    models.backbone_to_variables(imagenet, config)
  assert "layer1.0.downsample.1.running_mean" in str(error.value)
  assert "unexpected keys (1):\n    fc.weight" in str(error.value)


def test_cli_converts_and_checks_against_pytorch_logits(tmp_path, capsys, state_dict):
  tool = load_tool()
  out = tmp_path / "model"
  args = [
    "--input",
    str(shared_path("golden", "hrnet_small_random.pth")),
    "--output-dir",
    str(out),
    "--check-input",
    str(shared_path("golden", "input_65x65.npy")),
    "--check-output",
    str(shared_path("golden", "hrnet_small_output_65x65.npy")),
  ]
  assert tool.main(args) == 0
  assert "argmax agreement = 1.000000: OK" in capsys.readouterr().out
  model, variables = models.load_checkpoint(out)
  assert model.config == models.preset("small")
  restored = models.variables_to_state_dict(variables)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)

  wrong = tmp_path / "wrong.npy"
  np.save(wrong, np.load(shared_path("golden", "hrnet_small_output_65x65.npy")) * 1.01)
  args[1] = str(shared_path("golden", "hrnet_small_random_legacy.pth"))
  args[-1] = str(wrong)
  assert tool.main(args) == 1
  assert "FAILED" in capsys.readouterr().out


def test_cli_backbone_only_reinitializes_the_head(tmp_path, state_dict):
  out = tmp_path / "backbone"
  path = shared_path("golden", "hrnet_small_random.pth")
  load_tool().main(
    ["--input", str(path), "--output-dir", str(out), "--backbone-only", "--num-classes", "11"]
  )
  model, variables = models.load_checkpoint(out)
  assert model.config == models.preset("small", num_classes=11)
  np.testing.assert_array_equal(
    variables["batch_stats"]["stage4.1.fuse_layers.3.0.2.1"]["var"],
    state_dict["stage4.1.fuse_layers.3.0.2.1.running_var"],
  )
  head = variables["params"]["last_layer.0"]["kernel"]
  assert head.shape == (1, 1, 270, 270)
  assert not np.allclose(head, state_dict["last_layer.0.weight"].transpose(2, 3, 1, 0))


def test_load_checkpoint_names_a_directory_that_is_not_a_model(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a mseg_jax model checkpoint"):
    models.load_checkpoint(tmp_path)
