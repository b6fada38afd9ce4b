"""End to end on the synthetic composite: evaluate prints its table, its mIoU is the official
numpy mIoU of the saved predictions, an interrupted run resumes, and the regimes check models."""

import json

import cv2
import jax
import numpy as np
import pytest

from mseg_jax import evaluate, inference, models, taxonomy
from mseg_jax.input_pipeline import catalog, sources, synthetic
from mseg_jax.models.convert import abstract_variables

TINY = models.HRNetConfig(num_classes=194, stage1_blocks=1, stage1_planes=8,
                          stage_modules=(1, 1, 1), stage_blocks=((1, 1), (1, 1, 1), (1, 1, 1, 1)),
                          stage_widths=((8, 16), (8, 16, 32), (8, 16, 32, 64)))
SETTINGS = dict(base_size=64, crop=65, batch_size=2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return synthetic.write_synthetic(tmp_path_factory.mktemp("data"), num_train=1, num_val=3,
                                   num_test=6, size=(96, 128))


def write_tiny_checkpoint(directory):
  """A tiny random universal HRNet in the model format (numpy init: no slow jit of init)."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    if name.endswith("['var']") or name.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.uniform(-0.1, 0.1, leaf.shape).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(fill, abstract_variables(TINY))
  # Favour a few classes so that predictions are not all one class.
  bias = variables["params"]["last_layer.3"]["bias"]
  bias[[taxonomy.universal_id(n) for n in ("road", "sky", "building", "car")]] += 3.0
  models.save_checkpoint(directory, TINY, variables)
  return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


def official_miou(gray_dir, data_root, dataset, k):
  """accuracy_calculator.py: per-image intersectionAndUnion sums from the saved PNGs."""
  root = catalog.dataset_root(data_root, dataset)
  sums = np.zeros((3, k), np.int64)
  for image_path, label_path in sources.read_list(catalog.list_path(data_root, dataset, "val"),
                                                  root):
    pred = cv2.imread(str(gray_dir / f"{image_path.stem}.png"), cv2.IMREAD_GRAYSCALE)
    target = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED).astype(np.int64)
    output = pred.astype(np.int64).ravel()
    target = target.ravel()
    output[target == 255] = 255
    inter = output[output == target]
    bins = np.arange(k + 1)
    sums[0] += np.histogram(inter, bins)[0]
    sums[1] += np.histogram(output, bins)[0]
    sums[2] += np.histogram(target, bins)[0]
  inter, area_o, area_t = sums
  iou = inter / (area_o + area_t - inter + 1e-10)
  return iou.mean(), inter.sum() / area_t.sum()


def test_cli_prints_table_and_matches_official_numpy(data_root, checkpoint, tmp_path, capsys):
  out = tmp_path / "eval"
  evaluate.main(["--checkpoint", str(checkpoint), "--dataset", "camvid-11", "--data-root",
                 str(data_root), "--base-size", "64", "80", "--crop", "65", "--out-dir", str(out),
                 "--save-predictions", "--save-overlays", "--batch-size", "2"])
  printed = capsys.readouterr().out
  assert "| model | regime | scales | CamVid | h.mean |" in printed
  assert "camvid-11 base 64 ss: mIoU" in printed
  summary = json.loads((out / "results.json").read_text())
  results = summary["results"]
  assert sorted(r["base_size"] for r in results) == [64, 80]
  best = max(r["miou"] for r in results)
  assert summary["paper"] == [{"model": "tiny", "regime": "zero_shot", "scales": "ss",
                               "miou": {"camvid-11": best}, "hmean": None}]
  assert f"| tiny | zero_shot | ss | {100 * best:.1f} | — |" in printed
  for r in results:
    run_dir = out / "camvid-11" / str(r["base_size"]) / "ss"
    assert len(list((run_dir / "gray").glob("*.png"))) == 6
    assert len(list((run_dir / "overlay").glob("*.jpg"))) == 6
    miou, pixel_acc = official_miou(run_dir / "gray", data_root, "camvid-11", 11)
    assert r["miou"] == pytest.approx(miou, abs=1e-9)
    assert r["pixel_acc"] == pytest.approx(pixel_acc, abs=1e-9)
    assert r["class_names"] == taxonomy.class_names("camvid-11") and len(r["iou"]) == 11
  assert (out / "results.md").read_text().count("#### camvid-11") == 2


def test_interrupted_evaluation_resumes(data_root, checkpoint, tmp_path, monkeypatch):
  model, variables = models.load_checkpoint(checkpoint)
  fresh = evaluate.evaluate_dataset(model, variables, "camvid-11", data_root, **SETTINGS)

  calls = []
  real_call = inference.Predictor.__call__

  def flaky(self, image):
    calls.append(1)
    if len(calls) == 4:
      raise KeyboardInterrupt
    return real_call(self, image)

  monkeypatch.setattr(inference.Predictor, "__call__", flaky)
  monkeypatch.setattr(evaluate, "SAVE_EVERY_S", 1e9)  # only the interrupt saves
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate_dataset(model, variables, "camvid-11", data_root, save_dir=tmp_path,
                              **SETTINGS)
  assert int(np.load(tmp_path / "partial.npz")["done"]) == 3
  calls.clear()
  resumed = evaluate.evaluate_dataset(model, variables, "camvid-11", data_root,
                                      save_dir=tmp_path, **SETTINGS)
  assert len(calls) == 3  # only the 3 images left
  assert not (tmp_path / "partial.npz").exists()
  assert resumed["miou"] == pytest.approx(fresh["miou"], abs=1e-12)
  np.testing.assert_allclose(resumed["iou"], fresh["iou"], atol=1e-12)
  calls.clear()
  again = evaluate.evaluate_dataset(model, variables, "camvid-11", data_root, save_dir=tmp_path,
                                    **SETTINGS)
  assert not calls and again["miou"] == resumed["miou"]  # a finished evaluation is reused


def test_training_regime_maps_labels_to_universal_and_excludes_ids(data_root, checkpoint):
  model, variables = models.load_checkpoint(checkpoint)
  r = evaluate.evaluate_dataset(model, variables, "cityscapes-19", data_root,
                                regime="training", **SETTINGS)
  lut = taxonomy.to_universal_lut("cityscapes-19")
  reachable = sorted(set(lut[:19].tolist()) - {255})
  assert sorted(set(range(194)) - set(r["excluded_ids"])) == reachable
  assert len(r["iou"]) == 194
  assert r["miou"] == pytest.approx(np.mean([r["iou"][u] for u in reachable]))


def test_regimes_reject_mismatched_models(data_root, checkpoint):
  model, variables = models.load_checkpoint(checkpoint)
  with pytest.raises(ValueError, match="oracle needs a model trained on camvid-11"):
    evaluate.evaluate_dataset(model, variables, "camvid-11", data_root, regime="oracle")
  with pytest.raises(ValueError, match="--regime training"):
    evaluate.evaluate_dataset(model, variables, "cityscapes-19", data_root)
