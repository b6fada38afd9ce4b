"""The config files reproduce the official recipes (mseg_reference.md 2.2, mseg-semantic yamls)."""

import numpy as np
import pytest
import yaml
from conftest import shared_path

from configs import mseg_1m, mseg_3m, mseg_naive, single_dataset
from mseg_jax import models, taxonomy, train

# DATA.dataset of config/train/1080_release/mseg-unrelabeled.yaml and mseg-relabeled-3m.yaml
UNRELABELED = (
  "ade20k-150",
  "bdd",
  "cityscapes-19",
  "coco-panoptic-133",
  "idd-39",
  "mapillary-public65",
  "sunrgbd-37",
)
RELABELED = (
  "ade20k-150-relabeled",
  "bdd-relabeled",
  "cityscapes-19-relabeled",
  "coco-panoptic-133-relabeled",
  "idd-39-relabeled",
  "mapillary-public65-relabeled",
  "sunrgbd-37-relabeled",
)


CONFIGS = {"mseg_3m": mseg_3m, "mseg_1m": mseg_1m, "single_dataset": single_dataset}


def _config(name: str, arg: str | None = None):
  module = CONFIGS[name]
  return module.get_config() if arg is None else module.get_config(arg)


@pytest.mark.parametrize(
  "name,arg,crop,short,batch,steps,relabeled",
  [
    ("mseg_3m", "1080p", 713, 1080, 35, 600_000, True),
    ("mseg_3m", "720p", 593, 720, 49, 428_571, True),
    ("mseg_3m", "480p", 473, 480, 84, 250_000, True),
    ("mseg_1m", None, 713, 1080, 14, 500_000, True),
    ("mseg_1m", "unrelabeled", 713, 1080, 35, 200_000, False),
  ],
)
def test_mseg_recipes(name, arg, crop, short, batch, steps, relabeled):
  config = _config(name, arg)
  assert (config.data.crop_size, config.data.short_size, config.batch_size) == (crop, short, batch)
  assert train.total_steps(config) == steps
  assert train.train_datasets(config) == (RELABELED if relabeled else UNRELABELED)
  assert train.dataset_shares(config) == (batch // 7,) * 7
  assert dict(config.optim) == dict(base_lr=0.01, momentum=0.9, weight_decay=1e-4, power=0.9)
  assert train.label_luts(config, train.train_datasets(config)).shape == (7, 256)


def test_single_dataset_universal_and_oracle():
  universal = _config("single_dataset", "cityscapes-19")
  assert train.total_steps(universal) == 31_250 and universal.batch_size == 32
  assert train.num_classes(universal, ("cityscapes-19",)) == taxonomy.NUM_UNIVERSAL
  oracle = _config("single_dataset", "cityscapes-19,oracle")
  assert train.num_classes(oracle, ("cityscapes-19",)) == 19
  assert (train.label_luts(oracle, ("cityscapes-19",))[0] == range(256)).all()


def test_uneven_batch_split_is_an_error():
  config = _config("mseg_3m", "1080p")
  config.batch_size = 36
  with pytest.raises(ValueError, match="does not split evenly over 7 datasets"):
    train.dataset_shares(config)


def test_pretrained_backbone_keeps_a_mismatched_head_and_finetuning_refuses_it():
  init = {
    "params": {
      "conv1": {"kernel": np.zeros((3, 3, 3, 4), np.float32)},
      "last_layer.3": {"kernel": np.zeros((1, 1, 4, 19), np.float32)},
    }
  }
  pretrained = {
    "params": {
      "conv1": {"kernel": np.ones((3, 3, 3, 4), np.float32)},
      "last_layer.3": {"kernel": np.ones((1, 1, 4, 194), np.float32)},
    }
  }
  merged, kept = models.merge_pretrained(init, pretrained, strict=False, source="imagenet")
  assert (merged["params"]["conv1"]["kernel"] == 1).all()
  assert (merged["params"]["last_layer.3"]["kernel"] == 0).all()
  assert kept == ["['params']['last_layer.3']['kernel']"]
  with pytest.raises(ValueError, match=r"ckpt: .*last_layer.3.*shape \(1, 1, 4, 194\)"):
    models.merge_pretrained(init, pretrained, strict=True, source="ckpt")


def test_plan_checks_the_config_before_anything_is_built():
  config = mseg_3m.get_config("1080p")
  with pytest.raises(ValueError, match="config.data.data_root is not set"):
    train.make_plan(config)
  config.data.data_root = "/data"
  with pytest.raises(ValueError, match="'imagenet' needs config.init.checkpoint"):
    train.make_plan(config)
  config.init.kind = "scratch"
  with pytest.raises(ValueError, match="config.init.kind='scratch'"):
    train.make_plan(config)
  config.init.kind = "none"
  plan = train.make_plan(config)
  assert plan.datasets == RELABELED and plan.shares == (5,) * 7 and plan.total_steps == 600_000
  assert plan.model == models.preset("hrnet_w48") and plan.luts.shape == (7, 256)
  derived = plan.to_json()["derived"]
  assert derived["train_datasets"] == list(RELABELED) and derived["total_steps"] == 600_000


def test_augmentation_ranges_are_config_keys_that_reach_the_transforms(tmp_path, monkeypatch):
  """The official scale_min/max 0.5/2.0 and rotate_min/max -10/10 are config.data keys."""
  from mseg_jax.input_pipeline import batching, synthetic, transforms

  config = mseg_3m.get_config("1080p")
  assert tuple(config.data.scale_range) == (0.5, 2.0)
  assert tuple(config.data.rotate_range) == (-10.0, 10.0)
  seen = []
  real = transforms.train_transforms

  def record(short_size, crop_size, scale_range, rotate_range):
    seen.append((scale_range, rotate_range))
    return real(short_size, crop_size, scale_range, rotate_range)

  monkeypatch.setattr(transforms, "train_transforms", record)
  root = synthetic.write_synthetic(tmp_path, num_train=2, num_val=1, num_test=1, size=(32, 40))
  batching.dataset_examples(
    "cityscapes-19",
    0,
    data_root=root,
    crop_size=17,
    short_size=32,
    seed=0,
    scale_range=(0.9, 1.1),
    rotate_range=(-2.0, 3.0),
  )
  assert seen == [((0.9, 1.1), (-2.0, 3.0))]


def test_naive_baseline_mirrors_the_official_yaml():
  path = shared_path(
    "reference",
    "mseg-semantic",
    "mseg_semantic",
    "config",
    "train",
    "1080_release",
    "mseg-naive-baseline.yaml",
  )
  official = yaml.safe_load(path.read_text())
  config = mseg_naive.get_config()
  assert official["TRAIN"]["use_naive_taxonomy"] and config.data.taxonomy == "naive"
  assert train.train_datasets(config) == tuple(official["DATA"]["dataset"]) == UNRELABELED
  assert config.data.crop_size == official["TRAIN"]["train_h"] == official["TRAIN"]["train_w"]
  assert config.data.short_size == official["TRAIN"]["short_size"]
  assert config.batch_size == official["TRAIN"]["batch_size"]
  assert config.num_examples == official["TRAIN"]["num_examples"]
  for key in ("base_lr", "momentum", "weight_decay", "power"):
    assert config.optim[key] == official["TRAIN"][key], key
  config.data.data_root, config.init.kind = "/data", "none"
  plan = train.make_plan(config)
  assert plan.total_steps == 250_000 and plan.model.num_classes == taxonomy.NAIVE_NUM_LOGITS
  assert plan.luts.dtype == np.uint16 and plan.luts.shape == (7, 256)
  np.testing.assert_array_equal(plan.luts[2], taxonomy.naive_lut("cityscapes-19"))
  assert plan.luts[:, :255].max() > 255 and (plan.luts[:, 255] == 255).all()
  config.data.relabeled = True
  with pytest.raises(ValueError, match="taxonomy='naive' merges the unrelabeled"):
    train.make_plan(config)


def test_validation_is_off_by_default_and_needs_datasets_when_on():
  config = mseg_3m.get_config("1080p")
  assert config.validation.every_steps == 0
  config.data.data_root = "/data"
  config.init.kind = "none"
  config.validation.every_steps = 100
  with pytest.raises(
    ValueError, match="validation.every_steps=100 needs config.validation.datasets"
  ):
    train.make_plan(config)
  config.validation.datasets = ("camvid-11", "cityscapes-19")
  plan = train.make_plan(config)
  assert [train.validation_regime(plan, d) for d in config.validation.datasets] == [
    "zero_shot",
    "training",
  ]
  assert train.model_taxonomy(plan.config) == "universal"
  oracle = single_dataset.get_config("camvid-11,oracle")
  oracle.data.data_root = "/data"
  oracle.init.kind = "none"
  plan = train.make_plan(oracle)
  assert train.model_taxonomy(plan.config) == "camvid-11"
  assert train.validation_regime(plan, "camvid-11") == "oracle"
