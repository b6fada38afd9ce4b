"""Training: config -> mesh -> state -> loop, around one pure, jitted train step.

`python -m mseg_jax.train --config=configs/mseg_3m.py:1080p --workdir=DIR [--config.key=value]`

The step follows the official multi-GPU recipe (mseg-semantic `train.py`, branch `training`):
cross entropy (ignore 255) averaged over each dataset's valid pixels, then over the datasets;
BatchNorm over the global batch (under `jax.jit` with the batch sharded on the mesh axis
"data", XLA reduces BN statistics over all devices: synchronized BN); SGD with momentum and
weight decay on every parameter; poly learning rate applied per step. A PSPNet adds its aux
loss (weight `aux_weight`) and uses `optim.lr_multipliers` (officially 10x for ppm, cls, aux).
With `mgda.enabled` the datasets' gradients are combined with MGDA's min-norm weights instead of
their mean (mgda.py).

Any batch runs on any device count: the plan pads the global batch to a multiple of the device
count with slots masked out of the BatchNorm statistics and the loss, so the padded step is the
unpadded one. `max_device_batch` splits a step into micro-batches (BatchNorm statistics per
micro-batch: not the official step). With several processes, process 0 writes every file.
"""

import ctypes
import dataclasses
import functools
import json
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import app, flags, logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags
from tensorboardX import SummaryWriter

from mseg_jax import evaluate as evaluate_lib
from mseg_jax import mgda, models, taxonomy, upsampled_loss
from mseg_jax.input_pipeline import batching, synthetic
from mseg_jax.normalization import normalize

State = dict[str, Any]  # {"step", "params", "batch_stats", "opt_state"}
# {"image": uint8 NHWC, "label": uint8 NHW, "dataset": int32 N[, "valid": bool N (padding False)]}
Batch = dict[str, jax.Array]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TAXONOMIES = ("universal", "naive", "dataset")  # config.data.taxonomy


# ---------------------------------------------------------------------------------------------
# Config resolution.


def train_datasets(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The dataset names to train on: `data.datasets`, with "-relabeled" when `data.relabeled`."""
  names = tuple(config.data.datasets)
  if not config.data.relabeled:
    return names
  relabeled = tuple(n if n.endswith("-relabeled") else f"{n}-relabeled" for n in names)
  missing = [n for n in relabeled if n not in taxonomy.RELABELED_TRAIN_DATASETS]
  if missing:
    raise ValueError(
      f"config.data.relabeled: no relabeled version of {missing}; "
      f"known: {taxonomy.RELABELED_TRAIN_DATASETS}"
    )
  return relabeled


def dataset_shares(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Crops per dataset in one global batch: `batch_size` split evenly over the datasets."""
  n = len(config.data.datasets)
  if config.batch_size % n:
    raise ValueError(
      f"config.batch_size={config.batch_size} does not split evenly over "
      f"{n} datasets {tuple(config.data.datasets)}"
    )
  return (config.batch_size // n,) * n


def total_steps(config: ml_collections.ConfigDict) -> int:
  """`config.total_steps`, or num_examples crops per dataset (official `max_iters`)."""
  if config.total_steps is not None:
    return config.total_steps
  return config.num_examples // max(dataset_shares(config))


def label_luts(config: ml_collections.ConfigDict, datasets: tuple[str, ...]) -> np.ndarray:
  """(n, 256) lookup tables to the training taxonomy (`data.taxonomy`): universal (uint8),
  naive (uint16: naive ids reach 315), or the identity (one dataset's own taxonomy)."""
  kind = config.data.taxonomy
  if kind == "universal":
    return taxonomy.stacked_luts(datasets)
  if kind == "naive":
    unknown = [d for d in datasets if d not in taxonomy.UNRELABELED_TRAIN_DATASETS]
    if unknown:
      raise ValueError(
        f"config.data.taxonomy='naive' merges the unrelabeled training datasets "
        f"{taxonomy.UNRELABELED_TRAIN_DATASETS}, not {unknown} (config.data.relabeled=False)"
      )
    return np.stack([taxonomy.naive_lut(d) for d in datasets])
  if kind == "dataset":
    if len(datasets) != 1:
      raise ValueError(
        f"config.data.taxonomy='dataset' trains in one dataset's own taxonomy, "
        f"got {len(datasets)} datasets {datasets}"
      )
    return np.arange(256, dtype=np.uint8)[None]
  raise ValueError(f"config.data.taxonomy={kind!r}: use one of {', '.join(TAXONOMIES)}")


def num_classes(config: ml_collections.ConfigDict, datasets: tuple[str, ...]) -> int:
  """The model's outputs in the training taxonomy."""
  if config.data.taxonomy == "universal":
    return taxonomy.NUM_UNIVERSAL
  if config.data.taxonomy == "naive":
    return taxonomy.NAIVE_NUM_LOGITS
  return len(taxonomy.class_names(datasets[0]))


def model_config(
  config: ml_collections.ConfigDict, classes: int
) -> models.HRNetConfig | models.PSPNetConfig:
  """`model.preset` (an HRNet or PSPNet) with `model.arch` fields replaced."""
  preset = models.preset(config.model.preset, num_classes=classes)
  arch = config.model.arch.to_dict()
  if unknown := sorted(set(arch) - set(preset.to_dict())):
    raise ValueError(f"config.model.arch: {unknown} are not fields of {type(preset).__name__}")
  return type(preset).from_dict(preset.to_dict() | arch | {"num_classes": classes})


@dataclasses.dataclass(frozen=True)
class Plan:
  """A training config resolved and checked once: everything `train` needs to know.

  The global batch of `batch_size` crops sits in `devices * device_slots` slots: device d holds
  crops [floor(d*B/D), floor((d+1)*B/D)) of the batch, then padding slots (masked out of the
  BatchNorm statistics and the loss, so they change nothing). A device runs its slots in
  `micro_batches` forward/backward passes (`max_device_batch`).
  """

  config: ml_collections.ConfigDict = dataclasses.field(compare=False)
  datasets: tuple[str, ...]  # the training taxonomies, "-relabeled" included
  shares: tuple[int, ...]  # crops per dataset in a global batch
  total_steps: int
  model: models.HRNetConfig | models.PSPNetConfig
  luts: np.ndarray = dataclasses.field(compare=False)  # (len(datasets), 256) to the model's ids
  devices: int
  processes: int
  device_slots: int  # slots per device in one step
  micro_batches: int  # forward/backward passes per step, device_slots / micro_batches slots each

  @property
  def slots(self) -> int:
    return self.devices * self.device_slots

  @property
  def padded(self) -> bool:
    return self.slots != self.config.batch_size

  def device_crops(self) -> list[int]:
    """The real crops of each device (the rest of its `device_slots` are padding)."""
    b, d = self.config.batch_size, self.devices
    return [(i + 1) * b // d - i * b // d for i in range(d)]

  def summary(self) -> str:
    """The batch layout and what it costs, for the start-up message."""
    b, padding = self.config.batch_size, self.slots - self.config.batch_size
    text = (
      f"{b} crops on {self.devices} device{'s' * (self.devices > 1)}: {self.slots} slots, "
      f"{100 * padding / self.slots:.1f}% padding"
    )
    if self.micro_batches == 1:
      return text + (" (masked: the step is the unpadded one)" if padding else "")
    per = self.slots // self.micro_batches
    return text + (
      f"; {self.micro_batches} micro-batches of {self.device_slots // self.micro_batches} slots "
      f"per device (max_device_batch={self.config.max_device_batch}). Not the official step: "
      f"BatchNorm normalizes each micro-batch of {per} slots with its own statistics instead "
      f"of the {b} crops, and the running statistics average the micro-batches' (running "
      "variance without the spread between micro-batches); the loss and its averaging are "
      "unchanged"
    )

  def to_json(self) -> dict[str, Any]:
    """The config as run: every field, plus the values derived from them."""
    return {
      **self.config.to_dict(),
      "derived": {
        "train_datasets": list(self.datasets),
        "shares": list(self.shares),
        "total_steps": self.total_steps,
        "architecture": models.architecture(self.model),
        "model": self.model.to_dict(),
        "micro_batches": self.micro_batches,
        "devices": self.devices,
        "processes": self.processes,
        "device_slots": self.device_slots,
      },
    }


def model_taxonomy(config: ml_collections.ConfigDict) -> str:
  """The taxonomy the trained model predicts in: universal, naive, or its one dataset's."""
  kind = config.data.taxonomy
  return train_datasets(config)[0] if kind == "dataset" else kind


def device_layout(batch_size: int, devices: int, max_device_batch: int | None) -> tuple[int, int]:
  """(slots per device, micro-batches): the fewest slots that hold `batch_size` crops on
  `devices` devices in passes of at most `max_device_batch` slots each."""
  crops = -(-batch_size // devices)  # the most crops one device holds
  if max_device_batch is None or max_device_batch >= crops:
    return crops, 1
  if max_device_batch < 1:
    raise ValueError(f"config.max_device_batch={max_device_batch} must be at least 1")
  micro_batches = -(-crops // max_device_batch)
  return micro_batches * -(-crops // micro_batches), micro_batches


def make_plan(
  config: ml_collections.ConfigDict, devices: int | None = None, processes: int | None = None
) -> Plan:
  """Resolves `config` and checks it (data, devices, initialization) before anything is built.

  `devices` and `processes` default to this run's `jax.device_count()`, `jax.process_count()`.
  """
  devices = jax.device_count() if devices is None else devices
  processes = jax.process_count() if processes is None else processes
  if not config.data.data_root:
    raise ValueError("config.data.data_root is not set (--config.data.data_root=DIR)")
  if devices % processes:
    raise ValueError(f"{devices} devices do not split evenly over {processes} processes")
  if config.batch_size < processes:
    raise ValueError(
      f"config.batch_size={config.batch_size} has fewer crops than the {processes} processes"
    )
  if config.dtype not in DTYPES:
    raise ValueError(f"config.dtype={config.dtype!r}: use one of {sorted(DTYPES)}")
  if config.init.kind not in models.PRETRAINED_KINDS:
    raise ValueError(
      f"config.init.kind={config.init.kind!r}: use one of {', '.join(models.PRETRAINED_KINDS)}"
    )
  if config.init.kind != "none" and not config.init.checkpoint:
    raise ValueError(
      f"config.init.kind={config.init.kind!r} needs config.init.checkpoint: a "
      "model directory from tools/convert_torch_weights.py (--backbone-only for "
      "ImageNet HRNet or ResNet weights), or set --config.init.kind=none"
    )
  validation = config.validation
  if validation.every_steps and not validation.datasets:
    raise ValueError(
      f"config.validation.every_steps={validation.every_steps} needs config.validation.datasets"
    )
  datasets = train_datasets(config)
  device_slots, micro_batches = device_layout(
    config.batch_size, devices, config.get("max_device_batch")
  )
  if micro_batches > 1 and config.mgda.enabled:
    raise ValueError(
      f"config.max_device_batch={config.max_device_batch} splits the step into {micro_batches} "
      "micro-batches, which MGDA cannot (it needs every dataset's gradient of the whole step)"
    )
  return Plan(
    config=config,
    datasets=datasets,
    shares=dataset_shares(config),
    total_steps=total_steps(config),
    model=model_config(config, num_classes(config, datasets)),
    luts=label_luts(config, datasets),
    devices=devices,
    processes=processes,
    device_slots=device_slots,
    micro_batches=micro_batches,
  )


# Config fields that do not change what a step computes: a resumed run may change them freely.
# Everything else (and the derived values but the device layout) must match the checkpoint.
RESUME_FREE = (
  "checkpoint",
  "compilation_cache",
  "data.data_root",
  "data.lists_dir",
  "data.num_workers",
  "data.roots",
  "data.synthetic",
  "derived.device_slots",
  "derived.devices",
  "derived.processes",
  "distributed",
  "eval",
  "init",  # the state comes from the checkpoint
  "log_every",
  "max_device_batch",  # its effect is derived.micro_batches
  "resume_despite_changes",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b": leaf} of a JSON tree (lists are leaves)."""
  if isinstance(tree, Mapping):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """The fields outside RESUME_FREE whose values differ, as "key: saved -> current" lines."""
  old, new = (_flatten(json.loads(json.dumps(c))) for c in (saved, current))
  return [
    f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
    for key in sorted(old.keys() | new.keys())
    if not any(key == f or key.startswith(f"{f}.") for f in RESUME_FREE)
    and old.get(key) != new.get(key)
  ]


# ---------------------------------------------------------------------------------------------
# Schedule, optimizer, loss, step.


def poly_schedule(base_lr: float, max_iter: int, power: float) -> optax.Schedule:
  """lr after `count` updates: base_lr * (1 - count / max_iter) ** power.

  Step k (1-based) uses count = k - 1, as the official loop sets the lr after each step.
  """

  def schedule(count):
    remaining = (max_iter - jnp.asarray(count, jnp.int32)).astype(jnp.float32)  # exact
    return base_lr * (remaining / max_iter) ** power

  return schedule


def create_optimizer(
  optim: ml_collections.ConfigDict, max_iter: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """torch SGD: weight decay added to the gradient before momentum, on all parameters.

  `optim.lr_multipliers` (optional) {module: factor} scales the lr of the params whose name
  starts with "module." (torch param groups: the momentum buffer does not depend on the lr, so
  scaling the final update is the same).
  """
  schedule = poly_schedule(optim.base_lr, max_iter, optim.power)
  tx = optax.chain(
    optax.add_decayed_weights(optim.weight_decay), optax.sgd(schedule, momentum=optim.momentum)
  )
  multipliers = dict(optim.get("lr_multipliers") or {})
  if multipliers:

    def scale(updates, params=None):
      del params
      return {
        name: optax.tree.scale(multipliers.get(name.split(".")[0], 1.0), leaves)
        for name, leaves in updates.items()
      }

    tx = optax.chain(tx, optax.stateless(scale))
  return tx, schedule


def multi_dataset_loss(
  logits: jax.Array,
  labels: jax.Array,
  dataset: jax.Array,
  num_datasets: int,
  counts: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cross entropy (ignore 255) per dataset, averaged over the datasets with valid pixels.

  Each dataset's loss is the mean over the valid pixels of its crops (the loss of one official
  GPU); the total is their plain mean (DDP's gradient average), so each dataset weighs the
  same. A dataset without valid pixels in the batch gets weight 0 instead of NaN.

  Args:
    logits: (N, H, W, C) float logits.
    labels: (N, H, W) integer labels in [0, C) or 255.
    dataset: (N,) int index of each crop's dataset.
    num_datasets: number of datasets (static).
    counts: (num_datasets,) valid pixels per dataset to divide by; by default those of this
      batch (a micro-batch passes those of its whole step, so that the losses add up).

  Returns:
    (loss, per-dataset loss (num_datasets,), per-dataset valid pixel count (num_datasets,)).
  """
  logits = logits.astype(jnp.float32)
  valid = labels != taxonomy.IGNORE
  target = jnp.where(valid, labels, 0).astype(jnp.int32)
  picked = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
  pixel_loss = jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0)
  return _dataset_means(pixel_loss.sum(axis=(1, 2)), labels, dataset, num_datasets, counts)


def dataset_loss_and_accuracy_quarter(
  quarter: jax.Array,
  labels: jax.Array,
  dataset: jax.Array,
  num_datasets: int,
  counts: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`multi_dataset_loss` and `dataset_pixel_accuracy` of HRNet's quarter-resolution logits
  upsampled to the labels' size (align_corners=True, as the model's head), in one banded pass
  without the full-size logits in memory: (loss, per-dataset loss, per-dataset accuracy)."""
  valid = labels != taxonomy.IGNORE
  target = jnp.where(valid, labels, 0).astype(jnp.int32)
  sums, correct = upsampled_loss.pixel_sums(quarter.astype(jnp.float32), target, valid)
  loss, per_dataset, counts = _dataset_means(sums, labels, dataset, num_datasets, counts)
  return loss, per_dataset, _per_dataset(correct, labels, dataset, num_datasets, counts)[0]


def _per_dataset(image_sums, labels, dataset, num_datasets, counts):
  """(per-dataset sums of `image_sums` over valid pixel counts, 0 where none; the counts), the
  counts this batch's unless given."""
  if counts is None:
    counts = dataset_counts(labels, dataset, num_datasets)
  sums = jax.ops.segment_sum(image_sums, dataset, num_datasets)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0), counts


def _dataset_means(image_sums, labels, dataset, num_datasets, counts):
  """(loss, per-dataset loss, per-dataset valid count) from per-image loss sums."""
  per_dataset, counts = _per_dataset(image_sums, labels, dataset, num_datasets, counts)
  loss = per_dataset.sum() / jnp.maximum((counts > 0).sum(), 1)
  return loss, per_dataset, counts


def dataset_counts(labels: jax.Array, dataset: jax.Array, num_datasets: int) -> jax.Array:
  """(num_datasets,) float valid (not 255) pixels of each dataset's crops."""
  valid = (labels != taxonomy.IGNORE).sum(axis=(1, 2), dtype=jnp.float32)
  return jax.ops.segment_sum(valid, dataset, num_datasets)


def training_labels(batch: Batch, luts: np.ndarray) -> jax.Array:
  """The batch's labels in the model's ids; 255 in padding slots (batch["valid"] False)."""
  labels = taxonomy.remap_labels(batch["label"], luts, batch["dataset"])
  if "valid" in batch:
    labels = jnp.where(batch["valid"][:, None, None], labels, taxonomy.IGNORE)
  return labels


def dataset_pixel_accuracy(
  logits: jax.Array,
  labels: jax.Array,
  dataset: jax.Array,
  num_datasets: int,
  counts: jax.Array | None = None,
) -> jax.Array:
  """(num_datasets,) correct / valid pixels of each dataset's crops (the official training log's
  accuracy, one GPU per dataset); 0 for a dataset without valid pixels. `counts` as in
  `multi_dataset_loss` (a micro-batch's accuracies then add up to the step's)."""
  correct = (labels != taxonomy.IGNORE) & (jnp.argmax(logits, axis=-1) == labels)
  image_correct = correct.sum(axis=(1, 2), dtype=jnp.float32)
  return _per_dataset(image_correct, labels, dataset, num_datasets, counts)[0]


def forward_loss(
  params,
  batch_stats,
  batch: Batch,
  *,
  model: models.HRNet,
  luts: np.ndarray,
  rng=None,
  counts: jax.Array | None = None,
):
  """Train-mode forward and loss. Returns (loss, (new batch_stats, {"dataset_loss",
  "dataset_pixel_acc"})), per-dataset loss and pixel accuracy.

  Slots with batch["valid"] False (padding) count in neither the BatchNorm statistics nor the
  loss. `counts`: see `multi_dataset_loss` (the pixel accuracy is divided by them too). A PSPNet
  adds aux_weight x its aux head's loss (per dataset, as the main loss); `rng` draws its dropout
  masks. The pixel accuracy is the main head's.
  """
  images = normalize(batch["image"], model.dtype)
  labels = training_labels(batch, luts)
  masked = {"mask": batch["valid"]} if "valid" in batch else {}
  variables = {"params": params, "batch_stats": batch_stats}
  n = luts.shape[0]
  if isinstance(model, models.HRNet):  # the loss of its upsampled quarter logits, banded
    quarter, updates = model.apply(
      variables, images, train=True, return_quarter=True, mutable=["batch_stats"], **masked
    )
    loss, per_dataset, accuracy = dataset_loss_and_accuracy_quarter(
      quarter, labels, batch["dataset"], n, counts
    )
    return loss, (
      updates["batch_stats"],
      {"dataset_loss": per_dataset, "dataset_pixel_acc": accuracy},
    )
  if not isinstance(model, models.PSPNet):
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"], **masked)
    loss, per_dataset, _ = multi_dataset_loss(logits, labels, batch["dataset"], n, counts)
    accuracy = dataset_pixel_accuracy(logits, labels, batch["dataset"], n, counts)
    return loss, (
      updates["batch_stats"],
      {"dataset_loss": per_dataset, "dataset_pixel_acc": accuracy},
    )
  rngs = {} if rng is None else {"dropout": rng}
  (logits, aux), updates = model.apply(
    variables, images, train=True, return_aux=True, mutable=["batch_stats"], rngs=rngs, **masked
  )
  main, main_per_dataset, _ = multi_dataset_loss(logits, labels, batch["dataset"], n, counts)
  aux, aux_per_dataset, _ = multi_dataset_loss(aux, labels, batch["dataset"], n, counts)
  weight = model.config.aux_weight
  accuracy = dataset_pixel_accuracy(logits, labels, batch["dataset"], n, counts)
  return main + weight * aux, (
    updates["batch_stats"],
    {"dataset_loss": main_per_dataset + weight * aux_per_dataset, "dataset_pixel_acc": accuracy},
  )


def apply_gradients(state: State, grads, batch_stats, *, tx: optax.GradientTransformation) -> State:
  """The SGD update of `state` with `grads`; `batch_stats` from the forward that made them."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  return {
    "step": state["step"] + 1,
    "params": optax.apply_updates(state["params"], updates),
    "batch_stats": batch_stats,
    "opt_state": opt_state,
  }


def split_micro_batches(batch: Batch, micro_batches: int) -> Batch:
  """(S, ...) -> (micro_batches, S / micro_batches, ...): micro-batch j holds slots
  [j*m, (j+1)*m) of every device's share (m = its slots / micro_batches), still sharded."""
  mesh = jax.sharding.get_abstract_mesh()
  devices = 1 if mesh.empty else mesh.shape["data"]

  def split(x):
    x = x.reshape(devices, micro_batches, -1, *x.shape[1:]).swapaxes(0, 1)
    x = x.reshape(micro_batches, -1, *x.shape[3:])
    return x if mesh.empty else jax.lax.with_sharding_constraint(x, P(None, "data"))

  return {k: split(v) for k, v in batch.items()}


def micro_batch_gradients(
  loss_fn, params, batch_stats, batch: Batch, *, luts: np.ndarray, rng, micro_batches: int
):
  """Loss, (new batch_stats, per-dataset metrics) and gradients of the step, one micro-batch at a
  time (`jax.lax.scan`): `loss_fn` is `forward_loss` with its model and luts.

  Losses, per-dataset losses and pixel accuracies, and gradients add up to the step's (each
  micro-batch divides by the valid pixel counts of the whole step). Not the same math as one
  pass: each micro-batch normalizes with its own BatchNorm statistics; the new running
  statistics are the average of the micro-batches' updates, weighted by their real crops.
  """
  counts = dataset_counts(training_labels(batch, luts), batch["dataset"], luts.shape[0])
  micro = split_micro_batches(batch, micro_batches)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def body(carry, xs):
    index, part = xs
    crops = part["valid"].sum(dtype=jnp.float32) if "valid" in part else part["image"].shape[0]
    (loss, (stats, dataset_metrics)), grads = grad_fn(
      params, batch_stats, part, rng=jax.random.fold_in(rng, index), counts=counts
    )
    new = (loss, dataset_metrics, grads, jax.tree.map(lambda x: crops * x, stats), crops)
    return jax.tree.map(jnp.add, carry, new), None

  per_dataset = {"dataset_loss": counts, "dataset_pixel_acc": counts}
  zeros = jax.tree.map(
    jnp.zeros_like,
    (jnp.zeros(()), per_dataset, params, batch_stats, jnp.zeros(())),
  )
  (loss, dataset_metrics, grads, stats, crops), _ = jax.lax.scan(
    body, zeros, (jnp.arange(micro_batches), micro)
  )
  return (loss, (jax.tree.map(lambda x: x / crops, stats), dataset_metrics)), grads


def mgda_value_and_grad(
  params,
  batch_stats,
  batch: Batch,
  *,
  model: models.HRNet,
  luts: np.ndarray,
  normalization: str,
  tasks_per_pass: int,
  rng=None,
):
  """`value_and_grad(forward_loss)` with the datasets' gradients combined by MGDA weights.

  One forward (BatchNorm over the global batch and its statistics updated once, as the plain
  step), then one backward per dataset, `tasks_per_pass` at a time (0: all at once), giving
  g_t = d loss_t / d params; the gradient is sum_t w_t g_t with the min-norm weights w of
  `mgda.task_weights` over the datasets with valid pixels. The loss stays the datasets' mean.
  Returns ((loss, (batch_stats, forward_loss's per-dataset metrics and "mgda_weights")), grads).
  """
  num = luts.shape[0]

  def dataset_losses(params):
    loss, (new_stats, dataset_metrics) = forward_loss(
      params, batch_stats, batch, model=model, luts=luts, rng=rng
    )
    return dataset_metrics["dataset_loss"], (loss, new_stats, dataset_metrics)

  per_dataset, vjp, (loss, new_stats, dataset_metrics) = jax.vjp(
    dataset_losses, params, has_aux=True
  )
  task_grads = jax.lax.map(  # one at a time: a plain loop (a loop of size-1 vmaps is 3% slower)
    lambda e: vjp(e)[0],
    jnp.eye(num, dtype=per_dataset.dtype),
    batch_size=None if tasks_per_pass == 1 else tasks_per_pass,
  )
  pixels = dataset_counts(training_labels(batch, luts), batch["dataset"], num)
  weights = mgda.task_weights(task_grads, per_dataset, pixels > 0, normalization)
  dataset_metrics = {**dataset_metrics, "mgda_weights": weights}
  return (loss, (new_stats, dataset_metrics)), mgda.combine(task_grads, weights)


def train_step(
  state: State,
  batch: Batch,
  *,
  model: models.HRNet,
  luts: np.ndarray,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  seed: int = 0,
  mgda_options: Mapping[str, Any] | None = None,
  micro_batches: int = 1,
) -> tuple[State, dict[str, jax.Array]]:
  """One SGD step on a global batch. Pure; jit it with the state donated.

  mgda_options: None for the plain mean of the datasets' gradients, else the keyword arguments
  `normalization` and `tasks_per_pass` of `mgda_value_and_grad`. `micro_batches` > 1 runs the
  step in that many passes (`micro_batch_gradients`; not with MGDA). Dropout (PSPNet) draws
  from key(seed) folded with the step (and the micro-batch).
  """
  rng = jax.random.fold_in(jax.random.key(seed), state["step"])
  loss_fn = functools.partial(forward_loss, model=model, luts=luts)
  if mgda_options is not None:
    if micro_batches > 1:
      raise ValueError("MGDA needs the whole step in one pass (micro_batches=1)")
    grad_fn = functools.partial(
      mgda_value_and_grad, model=model, luts=luts, rng=rng, **mgda_options
    )
  elif micro_batches == 1:
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, rng=rng), has_aux=True)
  else:
    grad_fn = functools.partial(
      micro_batch_gradients, loss_fn, luts=luts, rng=rng, micro_batches=micro_batches
    )
  (loss, (batch_stats, dataset_metrics)), grads = grad_fn(
    state["params"], state["batch_stats"], batch
  )
  metrics = {
    "loss": loss,
    **dataset_metrics,
    "lr": schedule(state["step"]),
    "grad_norm": optax.tree.norm(grads),
  }
  return apply_gradients(state, grads, batch_stats, tx=tx), metrics


def release_freed_memory() -> None:
  """Returns freed heap to the OS (glibc's `malloc_trim`; nothing with another libc).

  XLA's compiler leaves about 0.5 GiB of freed heap mapped in the process (W48), which would add
  to the peak memory of the steps that follow (BENCHMARKS.md, issue 17).
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def init_state(
  model: models.HRNet,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  variables: Mapping[str, Any] | None = None,
) -> State:
  """A fresh state: `variables` (numpy/jax) if given, else `model.init`."""
  if variables is None:
    variables = model.init(rng, jnp.zeros((1, 33, 33, 3), jnp.float32), train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": tx.init(params),
  }


# ---------------------------------------------------------------------------------------------
# Initialization.


def initial_variables(plan: Plan, model: models.HRNet, rng: jax.Array) -> dict:
  """Random init, merged with `config.init.checkpoint` (kind "imagenet" or "finetune")."""
  variables = jax.device_get(
    jax.jit(functools.partial(model.init, train=False))(rng, jnp.zeros((1, 33, 33, 3), jnp.float32))
  )
  init = plan.config.init
  if init.kind == "none":
    return variables
  merged, kept = models.load_pretrained(variables, init.kind, init.checkpoint)
  note(f"Initialized from {init.checkpoint}; {len(kept)} arrays keep their random init: {kept}")
  return merged


# ---------------------------------------------------------------------------------------------
# The loop.


def note(message: str) -> None:
  """A line for the user (primary process), printed above the progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def pad_host_batch(host_batch: Mapping[str, np.ndarray], plan: Plan, process: int) -> dict:
  """This process's crops laid out in its devices' slots, with "valid" False in the padding
  (zero images, labels 255, dataset 0). Unchanged when the plan has no padding."""
  if not plan.padded:
    return dict(host_batch)
  per_process = plan.devices // plan.processes
  crops = plan.device_crops()[process * per_process : (process + 1) * per_process]
  slots = len(crops) * plan.device_slots
  rows = np.concatenate(
    [d * plan.device_slots + np.arange(n) for d, n in enumerate(crops)]
  )  # where this process's crops go among its slots
  if len(rows) != len(host_batch["image"]):
    raise ValueError(
      f"process {process} got {len(host_batch['image'])} crops, expected {len(rows)}"
    )
  out = {}
  for key, value in {**host_batch, "valid": np.ones(len(rows), bool)}.items():
    fill = taxonomy.IGNORE if key == "label" else 0
    out[key] = np.full((slots, *value.shape[1:]), fill, value.dtype)
    out[key][rows] = value
  return out


def global_batch(host_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> Batch:
  """This process's rows -> global arrays sharded on "data"."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in host_batch.items()
  }


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step (single process).

  With several processes the coordination service of `jax.distributed` catches SIGTERM and
  `CheckpointManager.reached_preemption` agrees on the step on every host.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._flag = threading.Event()
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
    return self

  def __exit__(self, *exc):
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._flag.is_set()
    return self._manager.reached_preemption(step)


class ResumeMismatch(ValueError):
  """The checkpoint to resume was trained with a config that computes differently."""


def check_resume(manager: ocp.CheckpointManager, step: int, plan: Plan) -> dict | None:
  """The checkpoint's plan (JSON; None if it records none). Raises ResumeMismatch listing the
  math-changing differences between it and `plan`, unless `config.resume_despite_changes`."""
  if "plan" not in manager.item_metadata(step):
    note(f"Checkpoint {step} records no config; resuming unchecked")
    return None
  saved = manager.restore(step, args=ocp.args.Composite(plan=ocp.args.JsonRestore()))["plan"]
  changes = config_changes(saved, plan.to_json())
  if not changes:
    return saved
  lines = "\n  ".join(changes)
  if plan.config.resume_despite_changes:
    note(f"Resuming step {step} despite config changes (checkpoint -> now):\n  {lines}")
    return saved
  raise ResumeMismatch(
    f"{manager.directory} (step {step}) was trained with another config; changes "
    f"(checkpoint -> now):\n  {lines}\nUse a new --workdir, or go on anyway with "
    "--config.resume_despite_changes=True"
  )


def check_finite(fetched: list[tuple[int, dict]]) -> None:
  """Raises FloatingPointError naming the first step whose loss or gradient is not finite."""
  for step, m in fetched:
    if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
      raise FloatingPointError(
        f"step {step}: loss {m['loss']}, gradient norm {m['grad_norm']}; "
        "stopping without saving this state"
      )


class _MetricsLog:
  """Per-step device metrics, fetched (one host sync) at log and checkpoint steps."""

  def __init__(self, workdir: Path, global_batch_size: int):
    self._pending: list[tuple[int, dict]] = []
    self._batch = global_batch_size
    self._last_time = time.perf_counter()
    self._last_step: int | None = None
    self._primary = jax.process_index() == 0
    if self._primary:
      self._writer = SummaryWriter(str(workdir / "tensorboard"))
      self._jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def fetch(self) -> list[tuple[int, dict]]:
    """The pending (step, metrics) on the host."""
    fetched = jax.device_get(self._pending)
    self._pending = []
    return fetched

  def write(self, fetched: list[tuple[int, dict]]) -> dict | None:
    """Writes a summary of the fetched steps; returns it."""
    if not fetched:
      return None
    steps, values = [s for s, _ in fetched], [m for _, m in fetched]
    now = time.perf_counter()
    first = steps[0] - 1 if self._last_step is None else self._last_step
    summary = {
      "step": steps[-1],
      "loss": float(np.mean([m["loss"] for m in values])),
      "lr": float(values[-1]["lr"]),
      "grad_norm": float(values[-1]["grad_norm"]),
      "dataset_loss": [float(x) for x in np.mean([m["dataset_loss"] for m in values], 0)],
      "dataset_pixel_acc": [float(x) for x in np.mean([m["dataset_pixel_acc"] for m in values], 0)],
      "images_per_s": (steps[-1] - first) * self._batch / (now - self._last_time),
    }
    if "mgda_weights" in values[-1]:
      weights = np.mean([m["mgda_weights"] for m in values], 0)
      summary["mgda_weights"] = [float(x) for x in weights]
    self._last_time, self._last_step = now, steps[-1]
    if self._primary:
      self._jsonl.write(json.dumps(summary) + "\n")
      self._jsonl.flush()
      for key in ("loss", "lr", "grad_norm", "images_per_s"):
        self._writer.add_scalar(f"train/{key}", summary[key], summary["step"])
      for i, x in enumerate(summary["dataset_loss"]):
        self._writer.add_scalar(f"train/loss_dataset_{i}", x, summary["step"])
      for i, x in enumerate(summary["dataset_pixel_acc"]):
        self._writer.add_scalar(f"train/pixel_acc_dataset_{i}", x, summary["step"])
      for i, x in enumerate(summary.get("mgda_weights", ())):
        self._writer.add_scalar(f"train/mgda_weight_dataset_{i}", x, summary["step"])
    return summary

  def write_validation(self, step: int, mious: dict[str, float]) -> None:
    """Validation mIoU per dataset, as {"step", "val_miou": {dataset: mIoU}}."""
    if self._primary:
      self._jsonl.write(json.dumps({"step": step, "val_miou": mious}) + "\n")
      self._jsonl.flush()
      for name, miou in mious.items():
        self._writer.add_scalar(f"val/miou_{name}", miou, step)

  def reset_clock(self) -> None:
    self._last_time, self._last_step = time.perf_counter(), None

  def close(self) -> None:
    if self._primary:
      self._writer.close()
      self._jsonl.close()


def _evaluator(
  config: ml_collections.ConfigDict, model, variables: dict, spec, batch_size: int
) -> evaluate_lib.Evaluator:
  """An Evaluator of the model being trained on the config's data, in its training taxonomy."""
  return evaluate_lib.Evaluator(
    model,
    variables,
    spec,
    config.data.data_root,
    roots=config.data.roots.to_dict() or None,
    lists_dir=config.data.lists_dir,
    batch_size=batch_size,
    model_taxonomy=model_taxonomy(config),
  )


def validation_regime(plan: Plan, dataset: str) -> str:
  """The regime a model in the training taxonomy is validated in on `dataset`."""
  kind = plan.config.data.taxonomy
  if kind == "universal":
    return "zero_shot" if dataset in taxonomy.TEST_DATASETS else "training"
  return "naive" if kind == "naive" else "oracle"


def validate(plan: Plan, model: models.HRNet, state: State) -> dict[str, float]:
  """Single-scale mIoU of the current weights on the first `validation.limit` images of each
  `validation.datasets` val list (nothing saved)."""
  config, validation = plan.config, plan.config.validation
  variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
  mious = {}
  for name in validation.datasets:
    spec = evaluate_lib.Spec(
      name,
      regime=validation_regime(plan, name),
      base_size=validation.base_size,
      crop=validation.crop,
      limit=validation.limit,
    )
    evaluator = _evaluator(config, model, variables, spec, validation.batch_size)
    mious[name] = evaluator.run()["miou"]
  return mious


def train(plan: Plan, workdir: str | Path) -> tuple[models.HRNet, dict] | None:
  """Trains (or resumes) in `workdir`; returns (fp32 model, variables), None if preempted.

  Writes workdir/{config.json, metrics.jsonl, tensorboard/, checkpoints/, model/}.
  """
  config = plan.config
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  primary = jax.process_index() == 0
  if (plan.devices, plan.processes) != (jax.device_count(), jax.process_count()):
    raise ValueError(
      f"the plan is for {plan.devices} devices in {plan.processes} processes, this run has "
      f"{jax.device_count()} in {jax.process_count()}"
    )
  note(plan.summary())
  model = models.build(plan.model, DTYPES[config.dtype])
  tx, schedule = create_optimizer(config.optim, plan.total_steps)

  mesh = make_mesh()
  jax.set_mesh(mesh)
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  rng = jax.random.key(config.seed)
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.checkpoint.keep, create=True, enable_async_checkpointing=True
  )
  manager = ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)
  latest = manager.latest_step()
  saved = None if latest is None else check_resume(manager, latest, plan)
  # grain saves each process's iterator position: with another process count the data order
  # starts over, from a seed of its own
  saved_processes = (saved or {}).get("derived", {}).get("processes", plan.processes)
  new_order = saved_processes != plan.processes
  data_seed = config.seed
  if new_order:
    data_seed = int(np.random.SeedSequence([config.seed, latest]).generate_state(1)[0])
    note(
      f"Checkpoint {latest} was written by {saved_processes} processes, this run "
      f"has {plan.processes}: the model and optimizer resume, the data order starts over (a "
      "new shuffle)"
    )
  dataset = batching.train_dataset(
    plan.datasets,
    plan.shares,
    data_root=config.data.data_root,
    roots=config.data.roots.to_dict() or None,
    crop_size=config.data.crop_size,
    short_size=config.data.short_size,
    seed=data_seed,
    num_workers=config.data.num_workers,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    lists_dir=config.data.lists_dir,
    scale_range=tuple(config.data.scale_range),
    rotate_range=tuple(config.data.rotate_range),
  )
  data_iter = iter(dataset)
  if primary:
    (workdir / "config.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n")
  if latest is None:
    state = jax.jit(functools.partial(init_state, model, tx), out_shardings=replicated)(
      rng, initial_variables(plan, model, rng)
    )
  else:
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(functools.partial(init_state, model, tx), rng),
    )
    items = {"state": ocp.args.StandardRestore(abstract)}
    if not new_order:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    state = manager.restore(latest, args=ocp.args.Composite(**items))["state"]
    note(f"Resumed from {manager.directory} at step {latest}")

  mgda_options = None
  if config.mgda.enabled:
    mgda_options = dict(
      normalization=config.mgda.normalization, tasks_per_pass=config.mgda.tasks_per_pass
    )
  step_fn = jax.jit(
    functools.partial(
      train_step,
      model=model,
      luts=plan.luts,
      tx=tx,
      schedule=schedule,
      seed=config.seed,
      mgda_options=mgda_options,
      micro_batches=plan.micro_batches,
    ),
    donate_argnums=0,
    out_shardings=replicated,
    compiler_options=models.compiler_options(),
  )
  log = _MetricsLog(workdir, config.batch_size)

  def flush() -> dict | None:
    fetched = log.fetch()
    check_finite(fetched)  # before these steps are logged, or their state saved
    return log.write(fetched)

  def save(step: int) -> None:
    flush()
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        plan=ocp.args.JsonSave(plan.to_json()),
      ),
    )

  start = int(state["step"])
  preempted = False
  bar = tqdm.tqdm(
    total=plan.total_steps,
    initial=start,
    desc="train",
    unit="step",
    disable=jax.process_index() != 0,
    dynamic_ncols=True,
  )
  try:
    with _Preemption(manager) as preemption:
      for step in range(start + 1, plan.total_steps + 1):
        host = pad_host_batch(next(data_iter), plan, jax.process_index())
        batch = global_batch(host, data_sharding)
        if step == start + 1:  # compile, then return the compiler's freed heap before running
          step_fn = step_fn.lower(state, batch).compile()
          release_freed_memory()
        state, metrics = step_fn(state, batch)
        log.add(step, metrics)
        bar.update()
        if step == start + 1:
          flush()  # excludes compilation from the throughput
          log.reset_clock()
        elif step % config.log_every == 0:
          summary = flush()
          bar.set_postfix(
            loss=f"{summary['loss']:.4f}",
            lr=f"{summary['lr']:.2e}",
            img_s=f"{summary['images_per_s']:.1f}",
          )
        if config.validation.every_steps and step % config.validation.every_steps == 0:
          flush()
          mious = validate(plan, model, state)
          log.write_validation(step, mious)
          note(
            f"step {step}: validation mIoU "
            + ", ".join(f"{k} {100 * v:.2f}" for k, v in mious.items())
          )
          log.reset_clock()
        if preemption.reached(step):
          note(f"SIGTERM at step {step}: saving a checkpoint; run the same command to resume")
          save(step)
          preempted = True
          break
        if step % config.checkpoint.every_steps == 0 or step == plan.total_steps:
          save(step)
      flush()
      manager.wait_until_finished()
  finally:
    bar.close()
    log.close()
    manager.close()
    data_iter.close()
  if preempted:
    return None
  variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
  models.save_checkpoint(  # collective, written once
    workdir / "model",
    plan.model,
    variables,
    taxonomy=model_taxonomy(plan.config),
    name=workdir.name,
  )
  barrier("model saved")
  return models.build(plan.model), variables


def evaluate(
  config: ml_collections.ConfigDict, workdir: str | Path, model: models.HRNet, variables: dict
) -> list[dict]:
  """Evaluates on `config.eval.datasets` at each of `config.eval.base_sizes` on every device of
  every process, where `python -m mseg_jax.evaluate` writes (workdir/eval/<dataset>/<base
  size>/<ss|ms>/); the primary process writes workdir/eval/results.{json,md} and prints the
  tables (best of base sizes)."""
  out = Path(workdir) / "eval"
  results = []
  for name in config.eval.datasets:
    for base_size in config.eval.base_sizes:
      spec = evaluate_lib.Spec(
        name,
        regime=config.eval.regime,
        base_size=base_size,
        scales=tuple(config.eval.scales),
        crop=config.eval.crop,
        limit=config.eval.limit,
        model=Path(workdir).name,
      )
      evaluator = _evaluator(config, model, variables, spec, config.eval.batch_size)
      results.append(evaluator.run(evaluator.save_dir(out)))
  if results and jax.process_index() == 0:
    report = evaluate_lib.write_report(evaluate_lib.collect(out), out)
    print(report.split("\n## Per-class")[0])
  return results


def ensure_data(config: ml_collections.ConfigDict) -> None:
  """Writes the synthetic composite at data.data_root if `data.synthetic` and it is missing
  (the primary process; the others wait)."""
  root = Path(config.data.data_root)
  if config.data.synthetic and not root.exists() and jax.process_index() == 0:
    note(f"Writing the synthetic composite to {root}")
    synthetic.write_synthetic(root, seed=config.seed)
  barrier("synthetic data")


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize` for multi-host runs; unset fields are auto-detected.

  CPU devices talk through `distributed.cpu_collectives` (gloo: any CPU cluster with TCP).
  """
  if config.distributed.enabled:
    jax.config.update("jax_cpu_collectives_implementation", config.distributed.cpu_collectives)
    jax.distributed.initialize(
      coordinator_address=config.distributed.coordinator_address,
      num_processes=config.distributed.num_processes,
      process_id=config.distributed.process_id,
    )


_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the model.")


def use_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Keeps compiled steps in `<workdir>/jax_cache` when `config.compilation_cache` is on, so that
  a resumed run loads them (W48's train step on 2 CPU cores: 85-102 s to start instead of
  207-269 s). $JAX_COMPILATION_CACHE_DIR, when set, takes precedence. Call before anything
  compiles: JAX fixes its cache at the first compilation."""
  if config.compilation_cache and jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", str(Path(workdir) / "jax_cache"))


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  use_compilation_cache(config, _WORKDIR.value)
  initialize_distributed(config)
  plan = make_plan(config)
  ensure_data(config)
  try:
    result = train(plan, _WORKDIR.value)
  except ResumeMismatch as e:
    sys.exit(f"error: {e}")
  if result is None:
    sys.exit(128 + signal.SIGTERM)
  evaluate(config, _WORKDIR.value, *result)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
