"""A list split over separate jobs (official index_start / index_step) and merged: the results of
one job over the whole list; the merge refuses shares that miss or repeat images or differ in
their settings. The end-of-training evaluation writes where `evaluate` writes, at several base
sizes."""

import json

import numpy as np
import pytest
from conftest import write_tiny_checkpoint

from configs import demo
from mseg_jax import evaluate, models, train
from mseg_jax.input_pipeline import synthetic

ARGS = ["--datasets", "camvid-11", "--base-size", "64", "--crop", "65", "--batch-size", "2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return synthetic.write_synthetic(
    tmp_path_factory.mktemp("data"), num_train=1, num_val=1, num_test=5, size=(96, 128)
  )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def whole(data_root, checkpoint, tmp_path_factory):
  """(results.json, confusion matrix) of one job over the whole list."""
  out = tmp_path_factory.mktemp("whole")
  evaluate.main(
    ["--checkpoint", str(checkpoint), "--data-root", str(data_root), "--output-dir", str(out)]
    + ARGS
  )
  run_dir = out / "camvid-11" / "64" / "ss"
  return json.loads((run_dir / "results.json").read_text()), np.load(run_dir / "confusion.npy")


def evaluate_shares(data_root, checkpoint, out, shares, *extra):
  for start, step in shares:
    evaluate.main(
      ["--checkpoint", str(checkpoint), "--data-root", str(data_root), "--output-dir", str(out)]
      + ARGS
      + ["--index-start", str(start), "--index-step", str(step), *extra]
    )


def test_merged_shares_equal_one_job_over_the_list(data_root, checkpoint, whole, tmp_path, capsys):
  out = tmp_path / "eval"
  evaluate_shares(data_root, checkpoint, out, [(0, 2), (2, 2), (4, 0)])
  run_dir = out / "camvid-11" / "64" / "ss"
  assert sorted(p.name for p in run_dir.iterdir()) == ["part_0-2", "part_2-4", "part_4-5"]
  assert not (out / "results.md").exists()  # a share is not a result
  assert "--merge --output-dir" in capsys.readouterr().out
  evaluate.main(["--merge", "--output-dir", str(out)])
  assert "| tiny | zero_shot | ss |" in capsys.readouterr().out
  result, confusion = whole
  assert json.loads((run_dir / "results.json").read_text()) == result
  np.testing.assert_array_equal(np.load(run_dir / "confusion.npy"), confusion)
  assert json.loads((out / "results.json").read_text())["results"] == [result]


@pytest.mark.parametrize(
  "shares, error",
  [
    ([(0, 2), (3, 0)], "images 2 to 3 of 5 are missing"),
    ([(0, 3), (2, 0)], "images 2 to 3 are in two parts"),
    ([(0, 3)], "images 3 to 5 are missing"),
  ],
)
def test_merge_refuses_shares_that_miss_or_repeat_images(
  data_root, checkpoint, tmp_path, shares, error
):
  evaluate_shares(data_root, checkpoint, tmp_path, shares)
  with pytest.raises(ValueError, match=error):
    evaluate.merge(tmp_path / "camvid-11" / "64" / "ss")


def test_merge_refuses_shares_of_other_settings(data_root, checkpoint, tmp_path):
  evaluate_shares(data_root, checkpoint, tmp_path, [(0, 2)])
  evaluate_shares(data_root, checkpoint, tmp_path, [(2, 0)], "--model-name", "other")
  with pytest.raises(ValueError, match="part_2-5 is not the evaluation of .*part_0-2"):
    evaluate.merge(tmp_path / "camvid-11" / "64" / "ss")


def test_share_past_the_end_of_the_list_is_an_error(data_root, checkpoint):
  model, variables = models.load_checkpoint(checkpoint)
  spec = evaluate.Spec("camvid-11", base_size=64, crop=65, index_start=5)
  with pytest.raises(ValueError, match="index_start=5 is past the end of the camvid-11 list"):
    evaluate.Evaluator(model, variables, spec, data_root)


def test_end_of_training_evaluation_writes_where_evaluate_writes(data_root, checkpoint, tmp_path):
  config = demo.get_config()
  with config.unlocked():
    config.data.data_root = str(data_root)
    config.eval.base_sizes = (64, 80)
    config.eval.crop = 65
    config.eval.batch_size = 2
  model, variables = models.load_checkpoint(checkpoint)
  results = train.evaluate(config, tmp_path / "tiny", model, variables)
  assert [r["base_size"] for r in results] == [64, 80]
  for r in results:
    path = tmp_path / "tiny" / "eval" / "camvid-11" / str(r["base_size"]) / "ss" / "results.json"
    assert json.loads(path.read_text()) == r
  summary = json.loads((tmp_path / "tiny" / "eval" / "results.json").read_text())
  assert summary["paper"][0]["miou"] == {"camvid-11": max(r["miou"] for r in results)}
  assert "| tiny | zero_shot | ss |" in (tmp_path / "tiny" / "eval" / "results.md").read_text()
