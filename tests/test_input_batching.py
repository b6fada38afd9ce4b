"""Spec: multi-dataset host batches (shares, dataset tags, on-device remap, workers, resume)."""

import json

import grain
import jax
import numpy as np
import pytest

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import batching, synthetic

DATASETS = synthetic.SYNTHETIC_TRAIN_DATASETS  # cityscapes-19, ade20k-150, mapillary-public65
CROP = 32


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return synthetic.write_synthetic(
    tmp_path_factory.mktemp("synth"), seed=0, num_train=6, num_val=2, num_test=2, size=(48, 64)
  )


def _dataset(data_root, shares=(2, 1, 2), **kwargs):
  kwargs = {"crop_size": CROP, "short_size": 48, "seed": 0, "num_threads": 0} | kwargs
  return batching.train_dataset(DATASETS, shares, data_root=data_root, **kwargs)


def _take(iterator, n):
  return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def _assert_same(batches, others):
  assert len(batches) == len(others)
  for a, b in zip(batches, others, strict=True):
    for key in ("image", "label", "dataset"):
      np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture(scope="module")
def first_batches(data_root):
  """The first 4 global batches in-process: the reference for the other tests."""
  return _take(iter(_dataset(data_root)), 4)


def test_batch_holds_each_dataset_share_in_order_in_own_ids(first_batches):
  for batch in first_batches:
    assert batch["image"].shape == (5, CROP, CROP, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (5, CROP, CROP) and batch["label"].dtype == np.uint8
    assert batch["dataset"].dtype == np.int32
    np.testing.assert_array_equal(batch["dataset"], [0, 0, 1, 2, 2])
    for label, index in zip(batch["label"], batch["dataset"], strict=True):
      ids = set(np.unique(label)) - {255}
      assert ids and max(ids) < len(taxonomy.class_names(DATASETS[index]))
  # The crops differ from step to step and within a step.
  assert not np.array_equal(first_batches[0]["image"], first_batches[1]["image"])
  assert not np.array_equal(first_batches[0]["image"][0], first_batches[0]["image"][1])


def test_uneven_shares(data_root):
  batch = next(iter(_dataset(data_root, shares=(3, 1, 2))))
  np.testing.assert_array_equal(batch["dataset"], [0, 0, 0, 1, 2, 2])


def test_on_device_remap_equals_host_lut(first_batches):
  luts = taxonomy.stacked_luts(DATASETS)

  @jax.jit
  def step(batch):  # as in the train step: the remap runs inside jit on device
    return taxonomy.remap_labels(batch["label"], luts, batch["dataset"])

  for batch in first_batches:
    device = np.asarray(step(batch))
    host = np.stack(
      [
        taxonomy.to_universal_lut(DATASETS[d])[label]
        for label, d in zip(batch["label"], batch["dataset"], strict=True)
      ]
    )
    np.testing.assert_array_equal(device, host)
    assert (host != 255).any()


def test_processes_yield_their_rows_of_the_global_batch(data_root, first_batches):
  # 5 rows over 5 processes: process 2 holds the ade20k crop, 3 and 4 mapillary's.
  parts = [_take(iter(_dataset(data_root, process_index=p, process_count=5)), 2) for p in range(5)]
  for step in range(2):
    for key in ("image", "label", "dataset"):
      np.testing.assert_array_equal(
        np.concatenate([p[step][key] for p in parts]), first_batches[step][key]
      )
  # 5 rows over 2 processes: rows [0, 2) and [2, 5)
  halves = [_take(iter(_dataset(data_root, process_index=p, process_count=2)), 1) for p in (0, 1)]
  assert [len(h[0]["image"]) for h in halves] == [2, 3]
  np.testing.assert_array_equal(
    np.concatenate([h[0]["image"] for h in halves]), first_batches[0]["image"]
  )
  with pytest.raises(ValueError, match="fewer crops than the 6 processes"):
    _dataset(data_root, process_index=0, process_count=6)


def test_bad_arguments(data_root):
  with pytest.raises(ValueError, match="one share per dataset"):
    _dataset(data_root, shares=(1, 1))
  with pytest.raises(ValueError, match="positive integers"):
    _dataset(data_root, shares=(1, 0, 1))


def test_threads_and_two_workers_give_identical_batches(data_root, first_batches):
  _assert_same(_take(iter(_dataset(data_root, num_threads=2)), 4), first_batches)
  iterator = iter(_dataset(data_root, num_workers=2))
  try:
    _assert_same(_take(iterator, 4), first_batches)
    state = json.loads(json.dumps(iterator.get_state()))  # the state is JSON-able
  finally:
    iterator.close()
  resumed = iter(_dataset(data_root, num_workers=2))
  try:
    resumed.set_state(state)
    _assert_same(_take(resumed, 1), _take(_skip(iter(_dataset(data_root)), 4), 1))
  finally:
    resumed.close()


def _skip(iterator, n):
  for _ in range(n):
    next(iterator)
  return iterator


def test_exact_resume_from_a_saved_iterator_state(data_root, first_batches, tmp_path):
  iterator = iter(_dataset(data_root))
  _assert_same(_take(iterator, 2), first_batches[:2])
  handler = grain.checkpoint.CheckpointHandler()  # what orbax's CheckpointSave/Restore run
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(iterator))
  resumed = handler.restore(
    tmp_path, args=grain.checkpoint.CheckpointRestore(iter(_dataset(data_root)))
  )
  _assert_same(_take(resumed, 2), first_batches[2:])
