"""What every preparation step shares: its error, atomic writes, and a parallel map over files."""

import concurrent.futures
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import tqdm

T = TypeVar("T")
R = TypeVar("R")


class PrepareError(RuntimeError):
  """Bad raw data or a failed step; the message names the file and what is wrong."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
  """Writes `data` to `path` through a temp file in the same folder and a rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_label_png(path: Path, label: np.ndarray) -> None:
  """A single-channel uint8 or uint16 label PNG, written atomically (never a truncated file)."""
  if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
    raise PrepareError(f"{path}: a label must be 2-D uint8/uint16, got {label.dtype}{label.shape}")
  ok, buf = cv2.imencode(".png", label)
  if not ok:
    raise PrepareError(f"{path}: PNG encoding failed")
  atomic_write_bytes(path, buf.tobytes())


def read_png(path: Path, flags: int = cv2.IMREAD_UNCHANGED, what: str = "file") -> np.ndarray:
  """A PNG as stored (uint8/uint16, 1 or 3 channels as BGR), or a PrepareError naming it (and
  `what` it is)."""
  path = Path(path)
  if not path.is_file():
    raise PrepareError(f"{path}: {what} not found")
  array = cv2.imread(str(path), flags)
  if array is None:
    raise PrepareError(f"{path}: unreadable or corrupt {what}")
  return array


def run_parallel(
  fn: Callable[[T], R], items: Iterable[T], *, workers: int, desc: str, unit: str = "file"
) -> Iterator[R]:
  """`fn` over `items` in `workers` processes (1: in this process), with a progress bar.

  Yields results in completion order. The first failure cancels what has not started and is
  raised again here, so a run never goes on past a bad file. `fn` must be a module-level
  function (it is pickled to the workers) and should raise PrepareError naming its file.
  Workers start from a fork server, not by forking this process: a fork of a process that runs
  jax, OpenCV or tqdm threads can copy a held lock and hang.
  """
  items = list(items)
  bar = tqdm.tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True)
  try:
    if workers <= 1:
      for item in items:
        yield fn(item)
        bar.update()
      return
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      futures = [pool.submit(fn, item) for item in items]
      try:
        for future in concurrent.futures.as_completed(futures):
          yield future.result()
          bar.update()
      except BaseException:
        for f in futures:
          f.cancel()
        raise
  finally:
    bar.close()


def default_workers() -> int:
  """All cores this process may use."""
  return len(os.sched_getaffinity(0))
