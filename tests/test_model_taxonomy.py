"""A model knows its taxonomy: checkpoints record it, the converter infers it only when the class
count is unambiguous, and evaluate and demo refuse a model of another taxonomy."""

import json

import pytest
from conftest import random_variables, shared_path, tiny_hrnet_config, write_tiny_checkpoint
from test_converter import load_tool

from mseg_jax import demo, evaluate, models
from mseg_jax.taxonomy import outputs


def test_taxonomies_are_told_apart_by_class_count_only_when_unique():
  assert outputs.taxonomies_with(194) == ["universal"]
  assert outputs.taxonomies_with(11) == ["camvid-11"]
  assert set(outputs.taxonomies_with(21)) == {"voc2012", "bdd-relabeled", "cityscapes-19-relabeled"}
  assert outputs.infer_taxonomy(194, "x") == "universal"
  with pytest.raises(ValueError, match="x: a model with 21 classes could be any of .*--taxonomy"):
    outputs.infer_taxonomy(21, "x")
  with pytest.raises(ValueError, match="matches no taxonomy"):
    outputs.infer_taxonomy(5, "x")


def test_checkpoint_records_taxonomy_and_name(tmp_path):
  config = tiny_hrnet_config(21)
  with pytest.raises(ValueError, match="could be any of"):
    models.save_checkpoint(tmp_path / "a", config, random_variables(config))
  with pytest.raises(ValueError, match="a camvid-11 model has 11 classes, this one 21"):
    models.save_checkpoint(tmp_path / "a", config, random_variables(config), taxonomy="camvid-11")
  models.save_checkpoint(
    tmp_path / "model", config, random_variables(config), taxonomy="voc2012", name="run7"
  )
  assert models.checkpoint_info(tmp_path / "model") == models.CheckpointInfo("voc2012", "run7")


def _drop_fields(directory):
  """Rewrites config.json as checkpoints were written before taxonomy and name."""
  path = directory / "config.json"
  meta = json.loads(path.read_text())
  del meta["taxonomy"], meta["name"]
  path.write_text(json.dumps(meta))


def test_older_checkpoints_load_with_taxonomy_from_an_unambiguous_class_count(tmp_path):
  universal = write_tiny_checkpoint(tmp_path / "universal")
  _drop_fields(universal)
  models.load_checkpoint(universal)
  assert models.checkpoint_info(universal) == models.CheckpointInfo("universal", "universal")
  ambiguous = tmp_path / "ambiguous"
  config = tiny_hrnet_config(21)
  models.save_checkpoint(ambiguous, config, random_variables(config), taxonomy="voc2012")
  _drop_fields(ambiguous)
  models.load_checkpoint(ambiguous)
  assert models.checkpoint_info(ambiguous) == models.CheckpointInfo(None, "ambiguous")


def test_converter_infers_an_unambiguous_taxonomy_and_asks_otherwise(tmp_path, capsys):
  tool = load_tool()
  path = str(shared_path("golden", "hrnet_small_random.pth"))
  args = ["--input", path, "--backbone-only"]
  assert tool.main([*args, "--output-dir", str(tmp_path / "a"), "--num-classes", "11"]) == 0
  assert "taxonomy: camvid-11 (the only one with 11 classes)" in capsys.readouterr().out
  assert models.checkpoint_info(tmp_path / "a").taxonomy == "camvid-11"
  with pytest.raises(SystemExit):
    tool.main([*args, "--output-dir", str(tmp_path / "b"), "--num-classes", "21"])
  assert "could be any of" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tool.main(
      [*args, "--output-dir", str(tmp_path / "b"), "--num-classes", "21", "--taxonomy", "camvid-11"]
    )
  assert "a camvid-11 model has 11 classes, this one 21" in capsys.readouterr().err
  assert not (tmp_path / "b").exists()
  tool.main(
    [*args, "--output-dir", str(tmp_path / "b"), "--num-classes", "21", "--taxonomy", "voc2012"]
  )
  assert models.checkpoint_info(tmp_path / "b").taxonomy == "voc2012"


@pytest.fixture(scope="module")
def cityscapes_model(tmp_path_factory):
  """A 19-class model recorded as a cityscapes-19 oracle."""
  directory = tmp_path_factory.mktemp("model") / "cs"
  config = tiny_hrnet_config(19)
  models.save_checkpoint(directory, config, random_variables(config), taxonomy="cityscapes-19")
  return directory


def test_evaluate_refuses_a_model_of_another_taxonomy(cityscapes_model, tmp_path, capsys):
  model, variables = models.load_checkpoint(cityscapes_model)
  for regime, dataset, needed in (
    ("oracle", "kitti-19", "kitti-19"),
    ("zero_shot", "camvid-11", "universal"),
  ):
    with pytest.raises(
      ValueError, match=f"needs a model of the {needed} taxonomy; .*cityscapes-19"
    ):
      evaluate.Evaluator(
        model,
        variables,
        evaluate.Spec(dataset, regime=regime),
        tmp_path,
        model_taxonomy="cityscapes-19",
      )
  with pytest.raises(SystemExit):
    evaluate.main(
      [
        "--checkpoint",
        str(cityscapes_model),
        "--datasets",
        "kitti-19",
        "--regime",
        "oracle",
        "--data-root",
        str(tmp_path),
      ]
    )
  assert "needs a model of the kitti-19 taxonomy" in capsys.readouterr().err


def test_demo_refuses_a_taxonomy_the_model_cannot_predict_in(cityscapes_model, tmp_path, capsys):
  with pytest.raises(SystemExit):
    demo.main(
      [
        "--checkpoint",
        str(cityscapes_model),
        "--input",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "out"),
        "--taxonomy",
        "kitti-19",
      ]
    )
  assert "predicts in the cityscapes-19 taxonomy" in capsys.readouterr().err
