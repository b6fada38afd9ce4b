"""Evaluation by 2 processes (jax.distributed on 127.0.0.1, gloo CPU collectives) with 2
simulated devices each: the confusion matrix and predictions of 1 device, the result files
written once, by the primary process.

Both processes run the real CLI; they are killed if they outlive the timeout.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import cv2
import jax
import numpy as np
import pytest
from conftest import write_tiny_checkpoint

from mseg_jax import evaluate, inference, models
from mseg_jax.input_pipeline import synthetic

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(commands: list[list[str]], env: dict) -> list[subprocess.CompletedProcess]:
  """Runs the commands at once; kills them all when the timeout passes."""
  procs = [
    subprocess.Popen(
      c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for c in commands
  ]
  deadline = time.monotonic() + TIMEOUT_S
  try:
    outputs = [p.communicate(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [
    subprocess.CompletedProcess(c, p.returncode, out, err)
    for c, p, (out, err) in zip(commands, procs, outputs, strict=True)
  ]


class Runs(NamedTuple):
  tmp: Path  # data/, tiny/ (the checkpoint)
  run_dir: Path  # of the 2-process run
  reference_dir: Path  # of the 1-device run
  reference: dict  # its results
  procs: list[subprocess.CompletedProcess]  # the 2 processes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("processes")
  data_root = synthetic.write_synthetic(
    tmp / "data", num_train=1, num_val=1, num_test=7, size=(96, 128)
  )
  checkpoint = write_tiny_checkpoint(tmp / "tiny")
  common = [
    sys.executable, "-m", "mseg_jax.evaluate", "--checkpoint", str(checkpoint),
    "--datasets", "camvid-11", "--data-root", str(data_root), "--base-size", "64",
    "--crop", "65", "--batch-size", "2", "--output-dir", str(tmp / "eval"), "--save-predictions",
    "--coordinator-address", f"127.0.0.1:{free_port()}", "--num-processes", "2",
  ]  # fmt: skip
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO),
  )
  procs = run_processes([common + ["--process-id", str(i)] for i in range(2)], env)
  for p in procs:
    assert p.returncode == 0, p.stderr[-3000:]
  # The reference: this (1-device) process.
  assert jax.device_count() == 1
  model, variables = models.load_checkpoint(checkpoint)
  spec = evaluate.Spec("camvid-11", base_size=64, crop=65, model="tiny")
  evaluator = evaluate.Evaluator(model, variables, spec, data_root, batch_size=2)
  reference = evaluator.run(tmp / "reference", save_predictions=True)
  return Runs(tmp, tmp / "eval" / "camvid-11" / "64" / "ss", tmp / "reference", reference, procs)


def test_two_processes_give_the_one_device_results(runs):
  run_dir, reference_dir, reference = runs.run_dir, runs.reference_dir, runs.reference
  np.testing.assert_array_equal(
    np.load(run_dir / "confusion.npy"), np.load(reference_dir / "confusion.npy")
  )
  assert json.loads((run_dir / "results.json").read_text()) == reference
  stems = sorted(p.name for p in (reference_dir / "gray").glob("*.png"))
  assert len(stems) == 7 and sorted(p.name for p in (run_dir / "gray").glob("*.png")) == stems
  for stem in stems:
    np.testing.assert_array_equal(
      cv2.imread(str(run_dir / "gray" / stem), cv2.IMREAD_UNCHANGED),
      cv2.imread(str(reference_dir / "gray" / stem), cv2.IMREAD_UNCHANGED),
    )


def test_the_primary_process_writes_the_results_once(runs):
  run_dir, (primary, other) = runs.run_dir, runs.procs
  assert not list(run_dir.glob("partial*.npz")) and not list(run_dir.glob("tmp.*"))
  assert "| tiny | zero_shot | ss |" in primary.stdout
  assert "mIoU" not in other.stdout
  report = json.loads((run_dir.parents[2] / "results.json").read_text())
  assert [r["num_images"] for r in report["results"]] == [7]


def test_a_resumed_run_counts_the_files_of_processes_it_lacks(runs, tmp_path, monkeypatch):
  """A process of an earlier 2-process run left partial.1.npz: one process skips and counts its
  images once."""
  model, variables = models.load_checkpoint(runs.tmp / "tiny")
  spec = evaluate.Spec("camvid-11", base_size=64, crop=65, model="tiny")
  calls, interrupt_at = [], [4]
  real_call = inference.Predictor.__call__

  def interrupted(self, image):
    calls.append(1)
    if len(calls) == interrupt_at[0]:
      raise KeyboardInterrupt
    return real_call(self, image)

  monkeypatch.setattr(inference.Predictor, "__call__", interrupted)
  monkeypatch.setattr(evaluate, "SAVE_EVERY_S", 1e9)
  evaluator = evaluate.Evaluator(model, variables, spec, runs.tmp / "data", batch_size=2)
  with pytest.raises(KeyboardInterrupt):
    evaluator.run(tmp_path)
  (tmp_path / "partial.npz").rename(tmp_path / "partial.1.npz")
  calls.clear()
  interrupt_at[0] = None
  assert evaluator.run(tmp_path) == runs.reference
  assert len(calls) == 4  # the 3 images of partial.1.npz skipped
  assert not list(tmp_path.glob("partial*.npz"))
