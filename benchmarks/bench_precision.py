"""How far the default matmul precision (TF32 on a GPU) and bf16 compute move the W48 golden.

  MSEG_JAX_SHARED=../shared PYTHONPATH=.:tests python benchmarks/bench_precision.py

For each golden input (65x65, 73x105) and setting, prints the logits' error relative to the
official fp32 PyTorch output (max |ours - official| / max |official|) and the share of pixels
whose argmax agrees. The settings: fp32 at "highest" precision (what the golden tests run),
fp32 at the backend's default (TF32 convolutions on Ampere and later GPUs; the same as highest
on CPU), and bf16 compute (BN folded, as inference runs). Weights are the golden README's
regenerated W48 (tests/test_models.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import shared_path
from test_models import nhwc, regenerate_golden_state_dict

from mseg_jax import models


def main() -> None:
  state_dict = models.checkpoint_state_dict(regenerate_golden_state_dict("hrnet_w48"))
  config = models.infer_config(state_dict)
  variables = models.state_dict_to_variables(state_dict, config)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  for size in ("65x65", "73x105"):
    x = nhwc(np.load(shared_path("golden", f"input_{size}.npy")))
    ref = nhwc(np.load(shared_path("golden", f"hrnet_w48_output_{size}.npy")))
    for name, dtype, precision in (
      ("fp32 highest", jnp.float32, "highest"),
      ("fp32 default", jnp.float32, "default"),
      ("bf16", jnp.bfloat16, "default"),
    ):
      model, folded = models.fold_batch_norm(models.build(config, dtype), variables)
      with jax.default_matmul_precision(precision):
        logits = np.asarray(jax.jit(model.apply)(folded, x), np.float32)
      error = np.abs(logits - ref).max() / np.abs(ref).max()
      agree = (logits.argmax(-1) == ref.argmax(-1)).mean()
      print(f"{size} {name}: relative error {error:.2e}, argmax agrees on {agree:.4%} of pixels")


if __name__ == "__main__":
  main()
