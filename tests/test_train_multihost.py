"""Two processes on 127.0.0.1 (`jax.distributed`, CPU collectives through gloo) train as one.

Each process of `python -m mseg_jax.train` holds one CPU device; together they must compute
what one process with 2 simulated devices computes, bit for bit, write every file once, and
stop and resume together on SIGTERM. Tiny HRNet, tiny crops, a few steps.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mseg_jax import models

REPO = Path(__file__).resolve().parents[1]
TINY = [  # 3 crops (one per dataset) on 2 devices: 4 slots, one of them padding
  "--config.model.arch.stage1_planes=8",
  "--config.model.arch.stage_widths=((4, 8), (4, 8, 16), (4, 8, 16, 32))",
  "--config.data.crop_size=33",
  "--config.batch_size=3",
  "--config.eval.datasets=()",
  "--config.log_every=1",
]
STEPS = 3
TIMEOUT = 300  # s; a process that hangs (a peer died) is killed


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",
  )


def _command(workdir: Path, data_root: Path, *overrides: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "mseg_jax.train",
    "--config=configs/demo.py",
    f"--workdir={workdir}",
    f"--config.data.data_root={data_root}",
    *TINY,
    *overrides,
  ]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two(
  workdir: Path, data_root: Path, env: dict, *overrides: str
) -> list[subprocess.Popen]:
  port = _free_port()
  return [
    subprocess.Popen(
      _command(
        workdir,
        data_root,
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={p}",
        *overrides,
      ),
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for p in range(2)
  ]


def _wait(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
  """(returncode, output) of each process; kills them all when one outlives TIMEOUT."""
  deadline, results = time.monotonic() + TIMEOUT, []
  try:
    for proc in procs:
      output, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
      results.append((proc.returncode, output))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return results


def _metrics(workdir: Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  lines = path.read_text().split("\n")[:-1] if path.exists() else []  # complete lines only
  return [json.loads(line) for line in lines]


def _variables(workdir: Path) -> dict[str, np.ndarray]:
  _, variables = models.load_checkpoint(workdir / "model")
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(variables)}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, env) -> tuple[Path, Path]:
  """(workdir, data root) of a 2-process run that also wrote the synthetic data."""
  tmp = tmp_path_factory.mktemp("two")
  data_root = tmp / "data"  # missing: the primary writes it, the other waits
  results = _wait(_start_two(tmp / "run", data_root, env, f"--config.total_steps={STEPS}"))
  for p, (code, output) in enumerate(results):
    assert code == 0, f"process {p}: {output[-4000:]}"
  assert "3 crops on 2 devices: 4 slots, 25.0% padding" in results[0][1]
  return tmp / "run", data_root


def test_two_processes_equal_one_process_with_two_devices_bit_for_bit(two_processes, env, tmp_path):
  workdir, data_root = two_processes
  one = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(
    _command(tmp_path, data_root, f"--config.total_steps={STEPS}"),
    cwd=REPO,
    env=one,
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  two, single = _variables(workdir), _variables(tmp_path)
  assert two.keys() == single.keys()
  for key in single:
    np.testing.assert_array_equal(two[key], single[key], err_msg=key)
  losses = [[m["loss"] for m in _metrics(w)] for w in (workdir, tmp_path)]
  assert losses[0] == losses[1] and len(losses[0]) == STEPS  # one line per step: written once
  assert json.loads((workdir / "config.json").read_text())["derived"]["processes"] == 2


def test_sigterm_stops_both_processes_and_they_resume_exactly(two_processes, env, tmp_path):
  workdir, data_root = two_processes
  procs = _start_two(tmp_path, data_root, env, f"--config.total_steps={STEPS}")
  deadline = time.monotonic() + TIMEOUT
  # config.json: both processes are past jax.distributed.initialize (which catches SIGTERM)
  # and still before the first step, so they agree to stop after it
  while not (tmp_path / "config.json").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  for proc in procs:
    proc.send_signal(signal.SIGTERM)
  results = _wait(procs)
  for p, (code, output) in enumerate(results):
    assert code == 128 + signal.SIGTERM, f"process {p}: {output[-4000:]}"
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1 and saved[0] < STEPS, saved
  assert not (tmp_path / "model").exists()

  results = _wait(_start_two(tmp_path, data_root, env, f"--config.total_steps={STEPS}"))
  for p, (code, output) in enumerate(results):
    assert code == 0, f"process {p}: {output[-4000:]}"
  assert f"at step {saved[0]}" in results[0][1]
  assert [m["step"] for m in _metrics(tmp_path)] == list(range(1, STEPS + 1))
  resumed, uninterrupted = _variables(tmp_path), _variables(workdir)
  for key in uninterrupted:
    np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)


def test_a_checkpoint_of_two_processes_resumes_in_one_with_a_new_data_order(
  two_processes, env, tmp_path
):
  """grain saves each process's iterator position, which one process cannot take up: the model
  and optimizer resume exactly, the data order starts over from a new shuffle, and the note
  says so."""
  workdir, data_root = two_processes
  shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")  # step STEPS, 2 processes
  one = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")

  def resume(total_steps: int, *overrides: str) -> str:
    command = _command(tmp_path, data_root, f"--config.total_steps={total_steps}", *overrides)
    proc = subprocess.run(
      command, cwd=REPO, env=one, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert f"Checkpoint {STEPS} was written by 2 processes, this run has 1" in output
    assert f"Resumed from {tmp_path / 'checkpoints'} at step {STEPS}" in output
    return output

  resume(STEPS)  # nothing left to train: the model is the restored state
  restored, saved = _variables(tmp_path), _variables(workdir)
  for key in saved:
    np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)
  resume(STEPS + 1, "--config.resume_despite_changes=True")  # the lr schedule's length
  assert [m["step"] for m in _metrics(tmp_path)] == [STEPS + 1]
