"""End to end on the synthetic composite: evaluate prints its table, its mIoU is the official
numpy mIoU of the saved predictions, an interrupted run resumes, the regimes check models, and
a relabeled evaluation with mseg-api style lists applies the official reward/penalty rule."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from conftest import (
  REPO,
  random_variables,
  tiny_hrnet_config,
  write_tiny_checkpoint,
  write_torch_checkpoint,
)

from mseg_jax import evaluate, inference, models, taxonomy
from mseg_jax.input_pipeline import catalog, sources, synthetic

SETTINGS = dict(base_size=64, crop=65)


def run_evaluation(
  model, variables, dataset, data_root, save_dir=None, *, lists_dir=None, roots=None, **spec
):
  """Evaluator(...).run(...) with the fast settings; `save_predictions` goes to run."""
  save_predictions = spec.pop("save_predictions", False)
  spec = evaluate.Spec(dataset, **spec)
  evaluator = evaluate.Evaluator(
    model, variables, spec, data_root, roots=roots, lists_dir=lists_dir, batch_size=2
  )
  return evaluator.run(save_dir, save_predictions=save_predictions)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return synthetic.write_synthetic(
    tmp_path_factory.mktemp("data"), num_train=1, num_val=3, num_test=6, size=(96, 128)
  )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


def intersection_and_union(output, target, k):
  """mseg_semantic/utils/iou.py intersectionAndUnion: (I, O, T) histograms over 0..K-1."""
  output = output.astype(np.int64).ravel()
  target = target.astype(np.int64).ravel()
  output[target == 255] = 255
  inter = output[output == target]
  bins = np.arange(k + 1)
  return np.stack([np.histogram(x, bins)[0] for x in (inter, output, target)])


def official_miou(gray_dir, data_root, dataset, k):
  """accuracy_calculator.py: per-image intersectionAndUnion sums from the saved PNGs."""
  root = catalog.dataset_root(data_root, dataset)
  sums = np.zeros((3, k), np.int64)
  for image_path, label_path in sources.read_list(
    catalog.list_path(data_root, dataset, "val"), root
  ):
    pred = cv2.imread(str(gray_dir / f"{image_path.stem}.png"), cv2.IMREAD_GRAYSCALE)
    sums += intersection_and_union(pred, cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED), k)
  inter, area_o, area_t = sums
  iou = inter / (area_o + area_t - inter + 1e-10)
  return iou.mean(), inter.sum() / area_t.sum()


def test_cli_prints_table_and_matches_official_numpy(data_root, checkpoint, tmp_path, capsys):
  out = tmp_path / "eval"
  evaluate.main(
    [
      "--checkpoint",
      str(checkpoint),
      "--datasets",
      "camvid-11",
      "--data-root",
      str(data_root),
      "--base-size",
      "64",
      "80",
      "--crop",
      "65",
      "--output-dir",
      str(out),
      "--save-predictions",
      "--save-overlays",
      "--batch-size",
      "2",
    ]
  )
  printed = capsys.readouterr().out
  assert "| model | regime | scales | CamVid | h.mean |" in printed
  assert "camvid-11 base 64 ss: mIoU" in printed
  summary = json.loads((out / "results.json").read_text())
  results = summary["results"]
  assert sorted(r["base_size"] for r in results) == [64, 80]
  best = max(r["miou"] for r in results)
  assert summary["paper"] == [
    {
      "model": "tiny",
      "regime": "zero_shot",
      "scales": "ss",
      "miou": {"camvid-11": best},
      "hmean": None,
      "mean": None,
      "gmean": None,
    }
  ]
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
  fresh = run_evaluation(model, variables, "camvid-11", data_root, **SETTINGS)

  calls = []
  real_call = inference.Predictor.__call__  # single scale: labels without probabilities

  def flaky(self, image):
    calls.append(1)
    if len(calls) == 4:
      raise KeyboardInterrupt
    return real_call(self, image)

  monkeypatch.setattr(inference.Predictor, "__call__", flaky)
  monkeypatch.setattr(evaluate, "SAVE_EVERY_S", 1e9)  # only the interrupt saves
  with pytest.raises(KeyboardInterrupt):
    run_evaluation(model, variables, "camvid-11", data_root, save_dir=tmp_path, **SETTINGS)
  assert np.load(tmp_path / "partial.npz")["done"].sum() == 3
  calls.clear()
  resumed = run_evaluation(model, variables, "camvid-11", data_root, save_dir=tmp_path, **SETTINGS)
  assert len(calls) == 3  # only the 3 images left
  assert not (tmp_path / "partial.npz").exists()
  assert resumed["miou"] == pytest.approx(fresh["miou"], abs=1e-12)
  np.testing.assert_allclose(resumed["iou"], fresh["iou"], atol=1e-12)
  calls.clear()
  again = run_evaluation(model, variables, "camvid-11", data_root, save_dir=tmp_path, **SETTINGS)
  assert not calls and again["miou"] == resumed["miou"]  # a finished evaluation is reused


def test_training_regime_maps_labels_to_universal_and_excludes_ids(data_root, checkpoint):
  model, variables = models.load_checkpoint(checkpoint)
  r = run_evaluation(model, variables, "cityscapes-19", data_root, regime="training", **SETTINGS)
  lut = taxonomy.to_universal_lut("cityscapes-19")
  reachable = sorted(set(lut[:19].tolist()) - {255})
  assert sorted(set(range(194)) - set(r["excluded_ids"])) == reachable
  assert len(r["iou"]) == 194
  assert r["miou"] == pytest.approx(np.mean([r["iou"][u] for u in reachable]))


def test_regimes_reject_mismatched_models(data_root, checkpoint):
  model, variables = models.load_checkpoint(checkpoint)
  with pytest.raises(ValueError, match="oracle needs a model trained on camvid-11"):
    run_evaluation(model, variables, "camvid-11", data_root, regime="oracle")
  with pytest.raises(ValueError, match="--regime training"):
    run_evaluation(model, variables, "cityscapes-19", data_root)


CS, CS_RELABELED = "cityscapes-19", "cityscapes-19-relabeled"


def official_relabeled_sums(pred, label, label_relabeled):
  """eval_rel_model_pred_on_unrel_data (numpy), then intersectionAndUnion over 194 classes."""
  target = taxonomy.to_universal_lut(CS)[label]
  target_relabeled = taxonomy.to_universal_lut(CS_RELABELED)[label_relabeled]
  relabeled = target_relabeled != target
  output = np.where(relabeled & (pred == target_relabeled), target, pred)
  output = np.where(relabeled & (pred != target_relabeled), 255, output)
  target[target_relabeled == 255] = 255
  return intersection_and_union(output, target, taxonomy.NUM_UNIVERSAL)


def write_relabeled_lists(root, lists, lines, gray_dir):
  """mseg-api style lists for cityscapes-19 and cityscapes-19-relabeled under `lists`, relabeled
  labels beside the unrelabeled ones in `root`: where the prediction is wrong but a relabeled
  class, in the left half, the relabeled label is the prediction (reward); 'person' becomes
  'bicyclist' (penalty unless predicted); the bottom 8 rows become unlabeled.
  Returns (reward, penalty) pixel counts."""
  lut = taxonomy.to_universal_lut(CS)
  from_universal = np.full(256, 255, np.uint8)
  num_relabeled = len(taxonomy.class_names(CS_RELABELED))
  from_universal[taxonomy.to_universal_lut(CS_RELABELED)[:num_relabeled]] = range(num_relabeled)
  bicyclist = taxonomy.class_id(CS_RELABELED, "bicyclist")
  (root / "relabeled").mkdir()
  relabeled_lines, reward, penalty = [], 0, 0
  for line in lines:
    image_rel, label_rel = line.split()
    label = cv2.imread(str(root / label_rel), cv2.IMREAD_UNCHANGED)
    pred = cv2.imread(str(gray_dir / f"{Path(image_rel).stem}.png"), cv2.IMREAD_GRAYSCALE)
    relabeled = from_universal[lut[label]]
    rewarded = (pred != lut[label]) & (label != 255) & (from_universal[pred] != 255)
    rewarded[:, label.shape[1] // 2 :] = False
    relabeled[rewarded] = from_universal[pred[rewarded]]
    person = label == taxonomy.class_id(CS, "person")
    relabeled[person] = bicyclist
    relabeled[-8:] = 255
    reward += (rewarded & ~person)[:-8].sum()
    penalty += (person & (pred != taxonomy.universal_id("bicyclist")))[:-8].sum()
    cv2.imwrite(str(root / "relabeled" / Path(label_rel).name), relabeled)
    relabeled_lines.append(f"{image_rel} relabeled/{Path(label_rel).name}")
  for name, text in ((CS, lines), (CS_RELABELED, relabeled_lines)):
    (lists / name / "list").mkdir(parents=True)
    (lists / name / "list" / "val.txt").write_text("\n".join(text) + "\n")
  return reward, penalty


def test_relabeled_cli_rewards_and_penalizes_with_lists_read_in_place(
  data_root, checkpoint, tmp_path
):
  """cityscapes-19 and cityscapes-19-relabeled share one data root and keep their lists in an
  mseg-api lists folder (2 of the 3 val images). The result is the official rule followed by
  intersectionAndUnion (numpy) on the saved raw predictions and both labels."""
  model, variables = models.load_checkpoint(checkpoint)
  plain = tmp_path / "plain"
  run_evaluation(
    model,
    variables,
    CS,
    data_root,
    regime="training",
    save_dir=plain,
    save_predictions=True,
    limit=2,
    **SETTINGS,
  )
  root = shutil.copytree(catalog.dataset_root(data_root, CS), tmp_path / "Cityscapes")
  lines = catalog.list_path(data_root, CS, "val").read_text().splitlines()[:2]
  lists = tmp_path / "lists"
  reward, penalty = write_relabeled_lists(root, lists, lines, plain / "gray")
  assert reward > 0 and penalty > 0  # the cases the test is about

  out = tmp_path / "eval"
  evaluate.main(
    [
      "--checkpoint",
      str(checkpoint),
      "--datasets",
      CS,
      "--data-root",
      str(data_root),
      "--roots",
      f"{CS}={root},{CS_RELABELED}={root}",
      "--lists-dir",
      str(lists),
      "--regime",
      "training",
      "--relabeled",
      "--base-size",
      "64",
      "--crop",
      "65",
      "--batch-size",
      "2",
      "--output-dir",
      str(out),
      "--save-predictions",
    ]
  )
  run_dir = out / CS / "64" / "ss_relabeled"
  r = json.loads((run_dir / "results.json").read_text())
  assert r["relabeled"] and r["num_images"] == 2
  sums = np.zeros((3, taxonomy.NUM_UNIVERSAL), np.int64)
  for line in lines:
    image_rel, label_rel = line.split()
    name = Path(label_rel).name
    pred = cv2.imread(str(run_dir / "gray" / f"{Path(image_rel).stem}.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(  # raw predictions are saved
      pred, cv2.imread(str(plain / "gray" / f"{Path(image_rel).stem}.png"), cv2.IMREAD_GRAYSCALE)
    )
    label = cv2.imread(str(root / label_rel), cv2.IMREAD_UNCHANGED)
    sums += official_relabeled_sums(
      pred, label, cv2.imread(str(root / "relabeled" / name), cv2.IMREAD_UNCHANGED)
    )
  inter, area_o, area_t = sums
  iou = inter / (area_o + area_t - inter + 1e-10)
  kept = [u for u in range(taxonomy.NUM_UNIVERSAL) if u not in r["excluded_ids"]]
  np.testing.assert_allclose(r["iou"], iou, atol=1e-12)
  assert r["miou"] == pytest.approx(iou[kept].mean(), abs=1e-12)
  assert r["pixel_acc"] == pytest.approx(inter.sum() / area_t.sum(), abs=1e-12)
  plain_result = json.loads((plain / "results.json").read_text())
  assert r["pixel_acc"] != plain_result["pixel_acc"]
  summary = json.loads((out / "results.json").read_text())
  assert [row["regime"] for row in summary["paper"]] == ["training+relabeled"]


def test_relabeled_evaluation_checks_its_inputs(data_root, checkpoint, tmp_path):
  model, variables = models.load_checkpoint(checkpoint)
  with pytest.raises(ValueError, match="part of the training regime"):
    run_evaluation(model, variables, "camvid-11", data_root, relabeled=True)
  lines = catalog.list_path(data_root, CS, "val").read_text().splitlines()
  lists = tmp_path / "relabeled_only"  # the relabeled list exists: the name is what is wrong
  (lists / CS_RELABELED / "list").mkdir(parents=True)
  (lists / CS_RELABELED / "list" / "val.txt").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match="unrelabeled name"):
    run_evaluation(
      model, variables, CS_RELABELED, data_root, regime="training", relabeled=True, lists_dir=lists
    )
  for relabeled_lines, error in ((lines[:2], "has 2 lines"), (lines[::-1], "is not")):
    lists = tmp_path / error.replace(" ", "_")
    for name, text in ((CS, lines), (CS_RELABELED, relabeled_lines)):
      (lists / name / "list").mkdir(parents=True)
      (lists / name / "list" / "val.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=error):
      run_evaluation(
        model, variables, CS, data_root, regime="training", relabeled=True, lists_dir=lists
      )


def test_saved_predictions_score_as_the_model_did_and_results_txt_is_official(
  data_root, checkpoint, tmp_path
):
  """`--predictions` scores a folder of gray PNGs without the network (the official
  has_prediction path); results.txt has the line format collect_results.py parses."""
  model, variables = models.load_checkpoint(checkpoint)
  ran = tmp_path / "ran"
  evaluator = evaluate.Evaluator(
    model, variables, evaluate.Spec("camvid-11", **SETTINGS), data_root, batch_size=2
  )
  direct = evaluator.run(ran, save_predictions=True, save_probabilities="max")
  assert len(list((ran / "confidence").glob("*.png"))) == 6
  out = tmp_path / "scored"
  evaluate.main(
    [
      "--predictions",
      str(ran / "gray"),
      "--datasets",
      "camvid-11",
      "--data-root",
      str(data_root),
      "--base-size",
      "64",
      "--output-dir",
      str(out),
      "--model-name",
      "saved",
    ]
  )
  run_dir = out / "camvid-11" / "64" / "ss"
  scored = json.loads((run_dir / "results.json").read_text())
  assert scored["model"] == "saved"
  for key in ("miou", "macc", "pixel_acc", "iou"):
    assert scored[key] == direct[key], key
  lines = (run_dir / "results.txt").read_text().splitlines()
  first = f"Eval result: mIoU/mAcc/allAcc {direct['miou']:.4f}/{direct['macc']:.4f}/"
  assert lines[0] == first + f"{direct['pixel_acc']:.4f}."
  assert float(lines[0].split()[-1].split("/")[0]) * 100 == pytest.approx(
    100 * direct["miou"], abs=0.01
  )
  assert len(lines) == 1 + 11
  name, iou, acc = taxonomy.class_names("camvid-11")[0], direct["iou"][0], direct["acc"][0]
  assert lines[1] == f"Class_00 result: iou/accuracy {iou:.4f}/{acc:.4f}, name: {name}."
  assert (out / "results.tex").read_text().startswith("\\begin{tabular}")

  stem = sorted((ran / "gray").glob("*.png"))[0]
  cv2.imwrite(str(stem), np.full((96, 128), 11, np.uint8))
  with pytest.raises(sources.InputError, match=f"{stem}: prediction holds id 11; .* 11 classes"):
    evaluate.Evaluator(
      None, None, evaluate.Spec("camvid-11", **SETTINGS), data_root, predictions_dir=ran / "gray"
    ).run()
  stem.unlink()
  with pytest.raises(sources.InputError, match=f"{stem}: prediction missing"):
    evaluate.Evaluator(
      None, None, evaluate.Spec("camvid-11", **SETTINGS), data_root, predictions_dir=ran / "gray"
    ).run()


def test_sigterm_saves_progress_like_ctrl_c(data_root, checkpoint, tmp_path, monkeypatch):
  """SIGTERM after the second image is counted: partial.npz holds those two, exit code 143."""
  counted = []
  real_update = evaluate.tqdm.tqdm.update

  def update(self, n=1):
    counted.append(n)
    if len(counted) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_update(self, n)

  monkeypatch.setattr(evaluate.tqdm.tqdm, "update", update)
  monkeypatch.setattr(evaluate, "SAVE_EVERY_S", 1e9)  # only the interrupt saves
  out = tmp_path / "eval"
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(
      [
        "--checkpoint",
        str(checkpoint),
        "--datasets",
        "camvid-11",
        "--data-root",
        str(data_root),
        "--base-size",
        "64",
        "--crop",
        "65",
        "--batch-size",
        "2",
        "--output-dir",
        str(out),
      ]
    )
  assert exit_info.value.code == 128 + signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  assert np.load(out / "camvid-11" / "64" / "ss" / "partial.npz")["done"].sum() == 2


def test_naive_checkpoint_in_the_official_format_converts_and_evaluates_zero_shot(
  data_root, tmp_path, capsys
):
  """A 316-output HRNet saved as a released .pth, converted by the tool and evaluated on
  camvid-11 in the naive regime: the mIoU is the official numpy mIoU of the saved predictions;
  Bicyclist comes from naive logit 278 (past 255); the camvid-11 classes without a naive source
  are never predicted."""
  naive = taxonomy.class_names("naive")
  favoured = [naive.index(n) for n in ("road", "sky", "building", "car", "bicyclist")]
  assert favoured[-1] > 255
  model, variables = models.load_checkpoint(
    write_tiny_checkpoint(tmp_path / "tiny", taxonomy.NAIVE_NUM_LOGITS, favoured)
  )
  state_dict = models.variables_to_state_dict(variables)
  pth = write_torch_checkpoint(
    tmp_path / "naive.pth", {f"module.{k}": v for k, v in state_dict.items()}
  )
  converted = tmp_path / "naive"
  tool = [sys.executable, str(REPO / "tools" / "convert_torch_weights.py")]
  proc = subprocess.run(
    [*tool, "--input", str(pth), "--output-dir", str(converted)], capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  converted_model, converted_variables = models.load_checkpoint(converted)
  assert converted_model.config == model.config and model.config.num_classes == 316
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(converted_variables), strict=True):
    np.testing.assert_array_equal(a, b)

  out = tmp_path / "eval"
  args = ["--checkpoint", str(converted), "--datasets", "camvid-11", "--data-root", str(data_root)]
  args += ["--regime", "naive", "--base-size", "64", "--crop", "65", "--batch-size", "2"]
  evaluate.main([*args, "--output-dir", str(out), "--save-predictions"])
  assert "| naive | naive | ss |" in capsys.readouterr().out
  r = json.loads((out / "camvid-11" / "64" / "ss" / "results.json").read_text())
  gray = out / "camvid-11" / "64" / "ss" / "gray"
  miou, pixel_acc = official_miou(gray, data_root, "camvid-11", 11)
  assert r["regime"] == "naive" and r["miou"] == pytest.approx(miou, abs=1e-9)
  assert r["pixel_acc"] == pytest.approx(pixel_acc, abs=1e-9)
  predicted = set()
  for path in gray.glob("*.png"):
    predicted |= set(np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).tolist())
  fed = taxonomy.naive_projection_matrix("camvid-11").any(axis=0)
  unfed = {taxonomy.class_id("camvid-11", n) for n in ("SignSymbol", "Pedestrian", "Column_Pole")}
  assert set(np.flatnonzero(~fed).tolist()) == unfed
  assert taxonomy.class_id("camvid-11", "Bicyclist") in predicted and not predicted & unfed


def test_model_name_defaults_to_the_name_the_checkpoint_records(data_root, tmp_path):
  """A training run records its workdir's name in workdir/model: the table rows say the run."""
  config = tiny_hrnet_config()
  models.save_checkpoint(tmp_path / "model", config, random_variables(config), name="run7")
  evaluate.main(
    [
      "--checkpoint",
      str(tmp_path / "model"),
      "--datasets",
      "camvid-11",
      "--data-root",
      str(data_root),
      "--limit",
      "1",
      "--base-size",
      "64",
      "--crop",
      "65",
      "--batch-size",
      "2",
    ]
  )
  summary = json.loads((tmp_path / "model" / "eval" / "results.json").read_text())
  assert [row["model"] for row in summary["paper"]] == ["run7"]
