"""Metrics equal an independent numpy version of the official `intersectionAndUnion`, and the
relabeled reward/penalty rule does what mseg-semantic's tests/test_relabeled_eval_utils.py
checks on 4x4 COCO label maps."""

import numpy as np
import pytest

from mseg_jax import metrics, taxonomy


def official_intersection_and_union(output, target, k, ignore_index=255):
  """mseg_semantic/utils/iou.py, numpy: histograms with bins 0..K, 255 out of range."""
  output = output.reshape(-1).astype(np.int64).copy()
  target = target.reshape(-1).astype(np.int64)
  output[target == ignore_index] = ignore_index
  intersection = output[output == target]
  area_i, _ = np.histogram(intersection, bins=np.arange(k + 1))
  area_o, _ = np.histogram(output, bins=np.arange(k + 1))
  area_t, _ = np.histogram(target, bins=np.arange(k + 1))
  return area_i, area_o + area_t - area_i, area_t


def _images(seed, k=7, n=3, shape=(23, 31)):
  """Predictions and targets with ignore pixels, class 5 only predicted, class 6 absent."""
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(n):
    target = rng.integers(0, 5, shape).astype(np.uint8)
    target[rng.random(shape) < 0.2] = 255
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, 6, shape)).astype(np.uint8)
    pred[pred == 255] = 0
    pairs.append((pred, target))
  return pairs


def test_iou_equals_official_numpy_over_several_images():
  k = 7
  pairs = _images(0, k)
  acc = metrics.ConfusionAccumulator(k)
  sums = np.zeros((3, k), np.int64)
  for pred, target in pairs:
    acc.update(pred, target)
    sums += np.stack(official_intersection_and_union(pred, target, k))
  got = metrics.scores(acc.result())
  inter, union, area_t = sums
  iou = inter / (union + 1e-10)
  assert union[6] == 0 and area_t[5] == 0 and union[5] > 0  # the cases the test is about
  np.testing.assert_allclose(got["iou"], iou, rtol=1e-12)
  np.testing.assert_allclose(got["acc"], inter / (area_t + 1e-10), rtol=1e-12)
  assert got["miou"] == pytest.approx(iou.mean())  # absent class 6 counts as 0
  assert got["miou_present"] == pytest.approx(iou[:6].mean())
  assert got["pixel_acc"] == pytest.approx(inter.sum() / area_t.sum())
  assert got["iou"][5] == 0.0 and got["present"][5] and not got["present"][6]


def test_excluded_ids_leave_the_mean():
  k = 7
  pred, target = _images(1, k, n=1)[0]
  inter, union, _ = official_intersection_and_union(pred, target, k)
  iou = inter / (union + 1e-10)
  got = metrics.scores(metrics.confusion_matrix(pred, target, k), excluded_ids=[2, 6])
  assert got["miou"] == pytest.approx(iou[[0, 1, 3, 4, 5]].mean())


def test_accumulator_flushes_before_int32_overflow(monkeypatch):
  monkeypatch.setattr(metrics.ConfusionAccumulator, "_FLUSH_AT", 1000)
  k = 7
  pairs = _images(2, k, n=4)  # 713 pixels each: flushes between images
  acc = metrics.ConfusionAccumulator(k, initial=np.eye(k, k + 1, dtype=np.int64))
  for pred, target in pairs:
    acc.update(pred, target)
  expected = np.eye(k, k + 1, dtype=np.int64)
  for pred, target in pairs:
    valid = target != 255
    np.add.at(expected, (target[valid], pred[valid]), 1)
  np.testing.assert_array_equal(acc.result(), expected)


def test_prediction_255_counts_as_a_miss_like_official():
  k = 7
  pred, target = _images(4, k, n=1)[0]
  pred[:5] = 255  # no class: in the target's area and union, in no class's prediction area
  inter, union, area_t = official_intersection_and_union(pred, target, k)
  got = metrics.scores(metrics.confusion_matrix(pred, target, k))
  np.testing.assert_allclose(got["iou"], inter / (union + 1e-10), rtol=1e-12)
  assert got["pixel_acc"] == pytest.approx(inter.sum() / area_t.sum())
  assert area_t.sum() > (pred[target != 255] < k).sum()  # the misses are counted


def test_accumulator_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="shape"):
    metrics.ConfusionAccumulator(3).update(np.zeros((2, 3)), np.zeros((3, 2)))


def _result(dataset, miou, base_size=360, model="m"):
  return {
    "dataset": dataset,
    "miou": miou,
    "miou_present": miou,
    "pixel_acc": 0.9,
    "base_size": base_size,
    "scales": [1.0],
    "regime": "zero_shot",
    "model": model,
  }


def test_paper_table_best_of_base_sizes_and_harmonic_mean():
  values = {
    "voc2012": 0.7,
    "pascal-context-60": 0.4,
    "camvid-11": 0.8,
    "wilddash-19": 0.6,
    "kitti-19": 0.65,
    "scannet-20": 0.5,
  }
  results = []
  for d, v in values.items():
    results += [_result(d, v - 0.1, 360), _result(d, v, 720), _result(d, v - 0.05, 1080)]
  table = metrics.markdown_table(results)
  header, _, row = table.strip().splitlines()
  assert header.split("|")[4:11] == [
    " VOC ",
    " PC ",
    " CamVid ",
    " WD ",
    " KITTI ",
    " SN ",
    " h.mean ",
  ]
  hmean = 6 / sum(1 / v for v in values.values())
  cells = [c.strip() for c in row.split("|")[4:11]]
  assert cells == [f"{100 * v:.1f}" for v in values.values()] + [f"{100 * hmean:.1f}"]
  at_360 = metrics.markdown_table(results, resolution=360).strip().splitlines()[2]
  assert at_360.split("|")[6].strip() == "70.0"  # camvid at 360 = 0.8 - 0.1


def test_paper_table_without_all_six_has_no_harmonic_mean():
  table = metrics.markdown_table([_result("camvid-11", 0.5)])
  assert table.strip().splitlines()[2].split("|")[-2].strip() == "—"
  assert "CamVid" in table


def test_class_table_lists_every_class():
  pred, target = _images(3, 7, n=1)[0]
  r = metrics.scores(metrics.confusion_matrix(pred, target, 7))
  r.update(dataset="toy", class_names=[f"c{i}" for i in range(7)])
  lines = metrics.class_iou_table(r).strip().splitlines()
  assert len(lines) == 4 + 7 and "absent" in lines[-1]


def test_oracle_harmonic_mean_leaves_out_wilddash():
  values = {
    "voc2012": 0.7,
    "pascal-context-60": 0.4,
    "camvid-11": 0.8,
    "kitti-19": 0.65,
    "scannet-20": 0.5,
  }
  results = [dict(_result(d, v), regime="oracle") for d, v in values.items()]
  (row,) = metrics.paper_rows(results)
  assert row["hmean"] == pytest.approx(5 / sum(1 / v for v in values.values()))
  assert row["miou"] == values


# 4x4 COCO label maps: the class of a silhouette in the centre (rows 1-3, columns 1-2), sky
# elsewhere; the prediction is in universal ids, the labels in each dataset's own ids.
COCO, COCO_RELABELED = "coco-panoptic-133", "coco-panoptic-133-relabeled"
CENTRE = (slice(1, None), slice(1, 3))


def _map(background: int, centre: int) -> np.ndarray:
  out = np.full((4, 4), background, np.uint8)
  out[CENTRE] = centre
  return out


def _reward_penalty(pred, target, target_relabeled):
  """The rule on own-id labels (converted to universal ids as the official test does)."""
  to_u = taxonomy.to_universal_lut(COCO)[target]
  relabeled_to_u = taxonomy.to_universal_lut(COCO_RELABELED)[target_relabeled]
  out_pred, out_target = metrics.relabeled_reward_penalty(pred, to_u, relabeled_to_u)
  return np.asarray(out_pred), np.asarray(out_target)


U = taxonomy.universal_id
UNREL_PERSON = _map(taxonomy.class_id(COCO, "sky-other-merged"), taxonomy.class_id(COCO, "person"))


def test_relabeled_correct_prediction_is_rewritten_to_the_unrelabeled_class():
  """Official pair 1: 'person' relabeled 'motorcyclist', predicted 'motorcyclist'."""
  relabeled = _map(
    taxonomy.class_id(COCO_RELABELED, "sky"), taxonomy.class_id(COCO_RELABELED, "motorcyclist")
  )
  pred, target = _reward_penalty(_map(U("sky"), U("motorcyclist")), UNREL_PERSON, relabeled)
  np.testing.assert_array_equal(target, _map(U("sky"), U("person")))
  np.testing.assert_array_equal(pred, target)  # 100% accuracy


def test_relabeled_wrong_prediction_becomes_255():
  """Official pair 2: 'person' relabeled 'motorcyclist', predicted 'person' (the unrelabeled
  class): a miss. Pixels whose label was not changed keep their prediction, right or wrong."""
  relabeled = _map(
    taxonomy.class_id(COCO_RELABELED, "sky"), taxonomy.class_id(COCO_RELABELED, "motorcyclist")
  )
  prediction = _map(U("sky"), U("person"))
  prediction[0, 0] = U("car")
  pred, target = _reward_penalty(prediction, UNREL_PERSON, relabeled)
  np.testing.assert_array_equal(target, _map(U("sky"), U("person")))
  expected = _map(U("sky"), 255)
  expected[0, 0] = U("car")
  np.testing.assert_array_equal(pred, expected)


def test_relabeled_unlabeled_pixels_leave_the_target():
  """'person' relabeled as unlabeled (255): the target is 255 there, whatever was predicted."""
  relabeled = _map(taxonomy.class_id(COCO_RELABELED, "sky"), 255)
  pred, target = _reward_penalty(_map(U("sky"), U("person")), UNREL_PERSON, relabeled)
  np.testing.assert_array_equal(target, _map(U("sky"), 255))
  np.testing.assert_array_equal(pred, _map(U("sky"), 255))


def test_relabeled_penalty_lowers_iou_and_pixel_accuracy():
  """Column 0 is 'person' in both labels and predicted 'person'; the centre's 'person' is
  relabeled 'motorcyclist' and predicted 'person' (6 misses); the other 6 pixels are sky.
  person: I = 4, T = 4 + 6, O = 4 -> IoU 0.4; sky: IoU 1; pixel accuracy (4 + 6) / 16."""
  unrelabeled = UNREL_PERSON.copy()
  unrelabeled[:, 0] = taxonomy.class_id(COCO, "person")
  relabeled = _map(
    taxonomy.class_id(COCO_RELABELED, "sky"), taxonomy.class_id(COCO_RELABELED, "motorcyclist")
  )
  relabeled[:, 0] = taxonomy.class_id(COCO_RELABELED, "person")
  prediction = _map(U("sky"), U("person"))
  prediction[:, 0] = U("person")
  pred, target = _reward_penalty(prediction, unrelabeled, relabeled)
  got = metrics.scores(metrics.confusion_matrix(pred, target, taxonomy.NUM_UNIVERSAL))
  assert got["iou"][U("person")] == pytest.approx(0.4)
  assert got["iou"][U("sky")] == pytest.approx(1.0)
  assert got["pixel_acc"] == pytest.approx(10 / 16)
  assert not got["present"][U("motorcyclist")]
  inter, union, _ = official_intersection_and_union(pred, target, taxonomy.NUM_UNIVERSAL)
  np.testing.assert_allclose(got["iou"], inter / (union + 1e-10), rtol=1e-12)


def test_relabeled_evaluations_get_their_own_table_row():
  results = [_result("cityscapes-19", 0.5), dict(_result("cityscapes-19", 0.6), relabeled=True)]
  for r in results:
    r["regime"] = "training"
  rows = metrics.paper_rows(results)
  assert [(row["regime"], row["miou"]) for row in rows] == [
    ("training", {"cityscapes-19": 0.5}),
    ("training+relabeled", {"cityscapes-19": 0.6}),
  ]


def test_paper_rows_have_arithmetic_and_geometric_means_and_a_latex_table():
  values = dict(zip(metrics.PAPER_DATASETS, (0.7, 0.4, 0.8, 0.6, 0.65, 0.5), strict=True))
  results = [dict(_result(d, v), model="m_1") for d, v in values.items()]
  (row,) = metrics.paper_rows(results)
  assert row["mean"] == pytest.approx(sum(values.values()) / 6)
  assert row["gmean"] == pytest.approx(np.prod(list(values.values())) ** (1 / 6))
  assert row["hmean"] < row["gmean"] < row["mean"]
  header, row_line = metrics.markdown_table(results).splitlines()[0:3:2]
  assert header.split("|")[-4:-1] == [" h.mean ", " a.mean ", " g.mean "]
  latex = metrics.latex_table(results).splitlines()
  assert latex[0] == "\\begin{tabular}{lll" + "r" * 9 + "}"
  assert latex[2].split(" & ")[-3:] == ["h.mean", "a.mean", "g.mean \\\\"]
  cells = [c.strip() for c in row_line.split("|")[1:-1]]
  assert latex[4] == " & ".join(["m\\_1", "zero\\_shot", *cells[2:]]) + " \\\\"


def test_naive_merge_gets_its_own_row_with_the_zero_shot_harmonic_mean():
  values = {d: 0.3 + 0.05 * i for i, d in enumerate(metrics.PAPER_DATASETS)}
  results = [_result(d, 0.9) for d in values]  # the universal model, zero-shot
  results += [dict(_result(d, v), regime="naive") for d, v in values.items()]
  rows = metrics.paper_rows(results)
  assert [row["regime"] for row in rows] == ["zero_shot", "naive"]
  assert rows[1]["miou"] == values
  assert rows[1]["hmean"] == pytest.approx(6 / sum(1 / v for v in values.values()))
  assert "| m | naive | ss |" in metrics.markdown_table(results)
