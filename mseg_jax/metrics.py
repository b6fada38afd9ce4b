"""Segmentation metrics as the official MSeg code computes them, and result tables.

The confusion matrix is accumulated on device (int32, flushed to an int64 host matrix before
it could overflow). It has one column more than classes: a prediction that is no class id (255,
the penalty of `relabeled_reward_penalty`) on a labelled pixel is counted there, which is how
`intersectionAndUnion` counts it (in the target's area and union, in no class's prediction
area). IoU follows `mseg_semantic/utils/avg_meter.py`: `I / (U + 1e-10)`, and the mIoU is the
plain mean over all classes of the evaluation taxonomy, so a class absent from both the ground
truth and the prediction counts as 0. The mean over the classes present (in the ground truth or
the prediction) is reported beside it, labelled as such.
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mseg_jax.taxonomy import IGNORE, UNRELABELED_TRAIN_DATASETS

EPS = 1e-10
# The paper's zero-shot columns, in its order, with their short names.
PAPER_DATASETS = {
  "voc2012": "VOC",
  "pascal-context-60": "PC",
  "camvid-11": "CamVid",
  "wilddash-19": "WD",
  "kitti-19": "KITTI",
  "scannet-20": "SN",
}
# Datasets the harmonic mean runs over, per regime (collect_results.py); "training+relabeled"
# is the training regime scored with `relabeled_reward_penalty`.
HMEAN_DATASETS = {
  "zero_shot": tuple(PAPER_DATASETS),
  "oracle": ("voc2012", "pascal-context-60", "camvid-11", "kitti-19", "scannet-20"),
  "training": UNRELABELED_TRAIN_DATASETS,
  "training+relabeled": UNRELABELED_TRAIN_DATASETS,
  "naive": tuple(PAPER_DATASETS),
}


@functools.partial(jax.jit, static_argnames=("num_classes",))
def confusion_matrix(pred: jax.Array, target: jax.Array, num_classes: int) -> jax.Array:
  """int32 (K, K + 1) counts [target, prediction]; target 255 (or any id >= K) is ignored;
  column K counts labelled pixels whose prediction is no class id (>= K, e.g. 255)."""
  pred = pred.reshape(-1).astype(jnp.int32)
  target = target.reshape(-1).astype(jnp.int32)
  k = num_classes
  index = jnp.where(target < k, target * (k + 1) + jnp.minimum(pred, k), k * (k + 1))
  counts = jnp.zeros(k * (k + 1) + 1, jnp.int32).at[index].add(1)
  return counts[: k * (k + 1)].reshape(k, k + 1)


@jax.jit
def relabeled_reward_penalty(
  pred: jax.Array, target: jax.Array, target_relabeled: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """A relabeled model's universal prediction scored against unrelabeled ground truth, as
  `eval_rel_model_pred_on_unrel_data` (mseg_semantic/tool/relabeled_eval_utils.py) does.

  `target` and `target_relabeled` are the unrelabeled and relabeled labels of the same image,
  both in universal ids. Where they differ, a prediction equal to the relabeled class becomes
  the unrelabeled class (reward) and any other becomes 255 (penalty: a miss of the target class
  that is no class's prediction); where the relabeled label is 255, so is the returned target.
  Returns (prediction, target), uint8.
  """
  pred, target = pred.astype(jnp.uint8), target.astype(jnp.uint8)
  target_relabeled = target_relabeled.astype(jnp.uint8)
  relabeled = target != target_relabeled
  pred = jnp.where(relabeled, jnp.where(pred == target_relabeled, target, IGNORE), pred)
  target = jnp.where(target_relabeled == IGNORE, IGNORE, target)
  return pred.astype(jnp.uint8), target.astype(jnp.uint8)


class ConfusionAccumulator:
  """Sums per-image confusion matrices (K, K + 1) on device; flushes to int64 on the host before
  overflow."""

  _FLUSH_AT = 2**31 - 1

  def __init__(self, num_classes: int, initial: np.ndarray | None = None):
    self.num_classes = num_classes
    self._host = np.zeros((num_classes, num_classes + 1), np.int64)
    if initial is not None:
      if initial.shape != self._host.shape:
        raise ValueError(f"confusion matrix shape {initial.shape} != {self._host.shape}")
      self._host += initial
    self._device = None
    self._pending = 0  # pixels summed on device since the last flush

  def update(self, pred: jax.Array, target: jax.Array) -> None:
    if pred.shape != target.shape:
      raise ValueError(f"prediction shape {pred.shape} != label shape {target.shape}")
    if self._pending + target.size > self._FLUSH_AT:
      self._flush()
    cm = confusion_matrix(pred, target, self.num_classes)
    self._device = cm if self._device is None else self._device + cm
    self._pending += target.size

  def _flush(self) -> None:
    if self._device is not None:
      self._host += np.asarray(self._device, np.int64)
    self._device, self._pending = None, 0

  def result(self) -> np.ndarray:
    """The int64 (K, K + 1) matrix [target, prediction] so far (`confusion_matrix`)."""
    self._flush()
    return self._host.copy()


def scores(cm: np.ndarray, excluded_ids: Sequence[int] = ()) -> dict:
  """Per-class IoU / accuracy and their means from a [target, prediction] confusion matrix,
  (K, K) or (K, K + 1) with `confusion_matrix`'s column of predictions that are no class.

  `miou` and `macc` are the official means over all classes not in `excluded_ids` (absent
  classes count as 0); `miou_present` averages only the classes that occur in the ground truth
  or the prediction; `pixel_acc` = sum(I) / sum(T).
  """
  cm = np.asarray(cm, np.float64)
  k = len(cm)
  intersection = np.diag(cm[:, :k])
  area_target = cm.sum(axis=1)
  area_pred = cm[:, :k].sum(axis=0)
  union = area_target + area_pred - intersection
  iou = intersection / (union + EPS)
  acc = intersection / (area_target + EPS)
  keep = np.ones(k, bool)
  keep[list(excluded_ids)] = False
  present = keep & (union > 0)
  return {
    "miou": float(iou[keep].mean()) if keep.any() else 0.0,
    "miou_present": float(iou[present].mean()) if present.any() else 0.0,
    "macc": float(acc[keep].mean()) if keep.any() else 0.0,
    "pixel_acc": float(intersection.sum() / (area_target.sum() + EPS)),
    "iou": iou.tolist(),
    "acc": acc.tolist(),
    "present": present.tolist(),
  }


def harmonic_mean(values: Sequence[float]) -> float:
  """n / sum(1 / x), as collect_results.py; 0 if any value is 0."""
  if any(v <= 0 for v in values):
    return 0.0
  return len(values) / sum(1.0 / v for v in values)


def geometric_mean(values: Sequence[float]) -> float:
  """(prod x) ** (1 / n), as collect_results.py offers; 0 if any value is 0."""
  if any(v <= 0 for v in values):
    return 0.0
  return math.exp(sum(math.log(v) for v in values) / len(values))


# The means of a paper row: key, table header, function.
MEANS = (
  ("hmean", "h.mean", harmonic_mean),
  ("mean", "a.mean", lambda values: sum(values) / len(values)),
  ("gmean", "g.mean", geometric_mean),
)


def _regime_label(result: dict) -> str:
  return result.get("regime", "") + ("+relabeled" if result.get("relabeled") else "")


def _scales_label(result: dict) -> str:
  scales = result.get("scales", (1.0,))
  return "ss" if list(scales) == [1.0] else "ms"


def best_of_base_sizes(results: Sequence[dict], resolution: str | int = "max") -> list[dict]:
  """One result per (model, regime, scales, dataset): the max mIoU over base sizes
  (collect_results.py `resolution="max"`), or the one at base size `resolution`."""
  best: dict[tuple, dict] = {}
  for r in results:
    if resolution != "max" and r.get("base_size") != int(resolution):
      continue
    key = (r.get("model", ""), _regime_label(r), _scales_label(r), r["dataset"])
    if key not in best or r["miou"] > best[key]["miou"]:
      best[key] = r
  return list(best.values())


def _percent(x: float | None) -> str:
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def paper_rows(results: Sequence[dict], resolution: str | int = "max") -> list[dict]:
  """The paper's rows: {"model", "regime", "scales", "miou": {dataset: mIoU}, "hmean", "mean",
  "gmean"} per (model, regime, scales), the best over base sizes unless `resolution` names one.
  `hmean`, `mean` and `gmean` are the harmonic, arithmetic and geometric means over the regime's
  datasets (six zero-shot test sets; five for oracle; seven training sets) when the row has them
  all, else None. A relabeled evaluation's regime is "training+relabeled"."""
  rows: dict[tuple, dict] = {}
  for r in best_of_base_sizes(results, resolution):
    key = (r.get("model", ""), _regime_label(r), _scales_label(r))
    row = rows.setdefault(key, {"model": key[0], "regime": key[1], "scales": key[2], "miou": {}})
    row["miou"][r["dataset"]] = r["miou"]
  for row in rows.values():
    group = HMEAN_DATASETS.get(row["regime"], HMEAN_DATASETS["zero_shot"])
    complete = all(d in row["miou"] for d in group)
    for key, _, mean in MEANS:
      row[key] = mean([row["miou"][d] for d in group]) if complete else None
  return list(rows.values())


def _paper_cells(results: Sequence[dict], resolution: str | int) -> list[list[str]]:
  """The paper table as cells: header, then one row per `paper_rows` row."""
  rows = paper_rows(results, resolution)
  datasets = [d for d in PAPER_DATASETS if any(d in row["miou"] for row in rows)]
  for row in rows:
    datasets += [d for d in row["miou"] if d not in datasets]
  header = ["model", "regime", "scales"] + [PAPER_DATASETS.get(d, d) for d in datasets]
  table = [header + [label for _, label, _ in MEANS]]
  for row in rows:
    cells = [row["model"] or "—", row["regime"] or "—", row["scales"]]
    cells += [_percent(row["miou"].get(d)) for d in datasets]
    table.append(cells + [_percent(row[key]) for key, _, _ in MEANS])
  return table


def markdown_table(results: Sequence[dict], resolution: str | int = "max") -> str:
  """The paper's layout (see `paper_rows`): one row per (model, regime, scales), one mIoU column
  per dataset (VOC, PC, CamVid, WD, KITTI, SN first, then any others), then h.mean, a.mean and
  g.mean; x100."""
  header, *rows = _paper_cells(results, resolution)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cells) + " |" for cells in rows]
  return "\n".join(lines) + "\n"


def _latex(text: str) -> str:
  for char in "&%$#_{}":
    text = text.replace(char, "\\" + char)
  return text.replace("—", "--")


def latex_table(results: Sequence[dict], resolution: str | int = "max") -> str:
  """`markdown_table` as a LaTeX tabular (booktabs rules)."""
  header, *rows = _paper_cells(results, resolution)
  lines = [
    "\\begin{tabular}{lll" + "r" * (len(header) - 3) + "}",
    "\\toprule",
    " & ".join(_latex(c) for c in header) + " \\\\",
    "\\midrule",
    *(" & ".join(_latex(c) for c in cells) + " \\\\" for cells in rows),
    "\\bottomrule",
    "\\end{tabular}",
  ]
  return "\n".join(lines) + "\n"


def results_txt(result: dict) -> str:
  """One evaluation in the official results.txt format (accuracy_calculator.py, the file
  collect_results.py parses): the means line, then one line per class not excluded."""
  excluded = set(result.get("excluded_ids", ()))
  lines = [
    f"Eval result: mIoU/mAcc/allAcc "
    f"{result['miou']:.4f}/{result['macc']:.4f}/{result['pixel_acc']:.4f}."
  ]
  for i, (name, iou, acc) in enumerate(
    zip(result["class_names"], result["iou"], result["acc"], strict=True)
  ):
    if i not in excluded:
      lines.append(f"Class_{i:02} result: iou/accuracy {iou:.4f}/{acc:.4f}, name: {name}.")
  return "\n".join(lines) + "\n"


def dataset_table(results: Sequence[dict]) -> str:
  """One row per evaluation: dataset, base size, scales, mIoU (official: all classes),
  mIoU over the classes present, mean class accuracy and pixel accuracy (x100)."""
  header = [
    "dataset",
    "regime",
    "base size",
    "scales",
    "crop",
    "images",
    "mIoU",
    "mIoU (present classes)",
    "mAcc",
    "pixel acc",
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in results:
    cells = [
      r["dataset"],
      _regime_label(r) or "—",
      str(r.get("base_size", "—")),
      _scales_label(r),
      str(r.get("crop", "—")),
      str(r.get("num_images", "—")),
      _percent(r["miou"]),
      _percent(r["miou_present"]),
      _percent(r.get("macc")),
      _percent(r["pixel_acc"]),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def class_iou_table(result: dict) -> str:
  """Per-class IoU and accuracy (x100) of one evaluation; excluded classes are marked."""
  excluded = set(result.get("excluded_ids", ()))
  present = result.get("present", [True] * len(result["iou"]))
  lines = [
    f"#### {result['dataset']} (base size {result.get('base_size', '—')}, {_scales_label(result)})",
    "",
    "| id | class | IoU | acc | note |",
    "|---|---|---|---|---|",
  ]
  for i, (name, iou, acc) in enumerate(
    zip(result["class_names"], result["iou"], result["acc"], strict=True)
  ):
    note = "excluded" if i in excluded else ("" if present[i] else "absent")
    lines.append(f"| {i} | {name} | {_percent(iou)} | {_percent(acc)} | {note} |")
  return "\n".join(lines) + "\n"
