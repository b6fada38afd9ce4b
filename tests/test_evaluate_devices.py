"""Evaluation spread over 4 (simulated CPU) devices: the same confusion matrix and the same
per-image predictions as on 1 device (zero-shot and training regimes), every device used, and
an evaluation interrupted on 4 devices resumes on 2 with only the images left.

Everything runs in one subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=4.
"""

import json

import cv2
import numpy as np
import pytest
from conftest import run_on_simulated_devices

CHILD = r"""
import json, sys
from pathlib import Path
import jax, numpy as np
from conftest import write_tiny_checkpoint
from mseg_jax import evaluate, inference, models
from mseg_jax.input_pipeline import synthetic

assert jax.device_count() == 4, jax.devices()
out = Path(sys.argv[1])
data_root = synthetic.write_synthetic(out / "data", num_train=1, num_val=5, num_test=7,
                                      size=(96, 128))
model, variables = models.load_checkpoint(write_tiny_checkpoint(out / "tiny"))
spec = evaluate.Spec("camvid-11", base_size=64, crop=65)
calls = []
real_call = inference.Predictor.__call__

def recorded(self, image):
  calls.append(self.device.id)
  if len(calls) == interrupt_at:
    raise KeyboardInterrupt
  return real_call(self, image)

inference.Predictor.__call__ = recorded
evaluate.SAVE_EVERY_S = 1e9  # only the interrupt saves
report = {}
for name, devices, interrupt_at in (("one", 1, 0), ("four", 4, 0), ("interrupted", 4, 5),
                                    ("resumed", 2, 0)):
  calls.clear()
  evaluator = evaluate.Evaluator(model, variables, spec, data_root, batch_size=2,
                                 devices=jax.devices()[:devices])
  save_dir = out / ("resumed" if name == "interrupted" else name)
  try:
    evaluator.run(save_dir, save_predictions=True)
  except KeyboardInterrupt:
    report["partial_done"] = int(np.load(save_dir / "partial.npz")["done"].sum())
  report[name] = sorted(calls)
training = evaluate.Spec("cityscapes-19", regime="training", base_size=64, crop=65)
for devices in (1, 4):  # labels mapped to universal ids on each device
  evaluate.Evaluator(model, variables, training, data_root, batch_size=2,
                     devices=jax.devices()[:devices]).run(out / f"training_{devices}")
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("devices")
  stdout = run_on_simulated_devices(CHILD, 4, out, timeout=600)
  return out, json.loads(stdout.strip().splitlines()[-1])


def test_four_devices_give_the_one_device_results(runs):
  out, _ = runs
  np.testing.assert_array_equal(
    np.load(out / "four" / "confusion.npy"), np.load(out / "one" / "confusion.npy")
  )
  one, four = (json.loads((out / n / "results.json").read_text()) for n in ("one", "four"))
  assert four == one and one["num_images"] == 7
  training = [json.loads((out / f"training_{n}" / "results.json").read_text()) for n in (1, 4)]
  assert training[1] == training[0] and training[0]["num_images"] == 5


def test_every_device_predicts_its_share_identically(runs):
  out, calls = runs
  assert calls["one"] == [0] * 7
  assert calls["four"] == [0, 0, 1, 1, 2, 2, 3]  # image i on device i % 4
  stems = sorted(p.name for p in (out / "one" / "gray").glob("*.png"))
  assert len(stems) == 7 and stems == sorted(p.name for p in (out / "four" / "gray").glob("*.png"))
  for stem in stems:
    np.testing.assert_array_equal(
      cv2.imread(str(out / "four" / "gray" / stem), cv2.IMREAD_UNCHANGED),
      cv2.imread(str(out / "one" / "gray" / stem), cv2.IMREAD_UNCHANGED),
    )


def test_interrupted_on_four_devices_resumes_on_two(runs):
  out, calls = runs
  # the 5th call (the 2nd image of a device) raised; the others stopped after their image
  assert 1 <= calls["partial_done"] <= 6
  assert calls["partial_done"] + len(calls["resumed"]) == 7  # only the images left
  assert set(calls["resumed"]) <= {0, 1}
  assert not list((out / "resumed").glob("partial*.npz"))
  resumed, one = (json.loads((out / n / "results.json").read_text()) for n in ("resumed", "one"))
  assert resumed == one
