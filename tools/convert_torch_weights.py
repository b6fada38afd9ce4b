"""Converts an official MSeg HRNet or PSPNet PyTorch checkpoint (.pth) to the mseg_jax format.

  python tools/convert_torch_weights.py --input mseg-3m.pth --output-dir DIR
  python tools/convert_torch_weights.py --input mseg-3m.pth --output-dir DIR \
      --check-input x.npy --check-output y.npy  # verify against PyTorch's logits
  python tools/convert_torch_weights.py --backbone-only \
      --input hrnetv2_w48_imagenet_pretrained.pth --output-dir DIR  # ImageNet init for training
  python tools/convert_torch_weights.py --backbone-only \
      --input resnet50_v2.pth --output-dir DIR  # the same for PSPNet-50 (deep-stem ResNet)

The .pth is read without torch (zip and legacy formats; only state_dict globals are allowed).
The architecture (HRNet, or PSPNet from its `layer0.*` deep stem), its size and the class count
are inferred from the state_dict, and every key and shape is checked both ways. The model's
taxonomy (universal, naive or a dataset name) is recorded: inferred from the class count when
only one taxonomy has it, else given with --taxonomy (e.g. 21 classes: voc2012,
bdd-relabeled or cityscapes-19-relabeled). Load the result with
`mseg_jax.models.load_checkpoint(DIR)`. --backbone-only reads the ImageNet HRNet or the ImageNet
deep-stem ResNet (conv1..conv3, layer1..layer4, fc) that the official PSPNet starts from, and
initializes the segmentation head.
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from mseg_jax import models, torch_checkpoint
from mseg_jax.taxonomy import outputs


def convert(
  input_path: Path,
  output: Path,
  backbone_only: bool = False,
  num_classes: int = 194,
  seed: int = 0,
  taxonomy: str | None = None,
) -> tuple[models.HRNetConfig | models.PSPNetConfig, str]:
  """Reads `input_path`, checks it against the inferred architecture, writes `output`.

  Returns (config, taxonomy): `taxonomy`, or the only one with the model's class count.
  """
  state_dict = models.checkpoint_state_dict(torch_checkpoint.load(input_path), str(input_path))
  if backbone_only:
    config = models.infer_config(state_dict, num_classes=num_classes, path=str(input_path))
    variables = models.backbone_to_variables(state_dict, config, seed, path=str(input_path))
  else:
    config = models.infer_config(state_dict, path=str(input_path))
    variables = models.state_dict_to_variables(state_dict, config, path=str(input_path))
  if taxonomy is None:
    taxonomy = outputs.infer_taxonomy(config.num_classes, str(input_path))
  outputs.check_taxonomy(taxonomy, config.num_classes, str(input_path))
  models.save_checkpoint(output, config, variables, taxonomy=taxonomy)
  return config, taxonomy


def check(directory: Path, input_npy: Path, output_npy: Path) -> tuple[float, float]:
  """Runs the converted model (fp32) on X (N,3,H,W) and compares with PyTorch's Y (N,C,H,W).

  Returns (max |diff| / max |Y|, argmax agreement).
  """
  x = np.load(input_npy)
  y = np.load(output_npy)
  if x.ndim != 4 or x.shape[1] != 3:
    raise ValueError(f"{input_npy}: expected (N, 3, H, W) normalized images, got {x.shape}")
  model, variables = models.load_checkpoint(directory)
  expected = (x.shape[0], model.config.num_classes, *x.shape[2:])
  if y.shape != expected:
    raise ValueError(f"{output_npy}: expected logits of shape {expected}, got {y.shape}")
  forward = jax.jit(
    lambda v, image: model.apply(v, image[None], train=False)[0],
    compiler_options=models.compiler_options(),
  )
  with jax.default_matmul_precision("highest"):
    images = x.transpose(0, 2, 3, 1).astype(np.float32)
    ours = np.stack(
      [
        np.asarray(forward(variables, image))
        for image in tqdm(images, desc="check", disable=len(images) < 2)
      ]
    )
  ref = y.transpose(0, 2, 3, 1)
  rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
  agreement = float((ours.argmax(-1) == ref.argmax(-1)).mean())
  return rel, agreement


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", type=Path, required=True, help="PyTorch .pth checkpoint")
  parser.add_argument("--output-dir", type=Path, required=True, help="output checkpoint directory")
  parser.add_argument(
    "--backbone-only",
    action="store_true",
    help="load an ImageNet HRNet or deep-stem ResNet (PSPNet) classification checkpoint into "
    "the backbone; the segmentation head is initialized randomly",
  )
  parser.add_argument("--num-classes", type=int, default=194, help="head size (--backbone-only)")
  parser.add_argument("--seed", type=int, default=0, help="head init seed (--backbone-only)")
  parser.add_argument(
    "--taxonomy",
    choices=outputs.taxonomy_names(),
    metavar="NAME",
    help="the model's taxonomy: universal, naive or a dataset name (default: the only "
    "taxonomy with the model's class count)",
  )
  parser.add_argument("--check-input", type=Path, help="(N,3,H,W) float32 normalized images")
  parser.add_argument("--check-output", type=Path, help="(N,C,H,W) logits PyTorch gave for them")
  parser.add_argument(
    "--rtol", type=float, default=2e-4, help="max |diff| / max |reference| allowed by the check"
  )
  args = parser.parse_args(argv)
  if (args.check_input is None) != (args.check_output is None):
    parser.error("--check-input and --check-output go together")

  try:
    config, taxonomy = convert(
      args.input, args.output_dir, args.backbone_only, args.num_classes, args.seed, args.taxonomy
    )
  except ValueError as e:
    parser.error(str(e))
  chosen = "given" if args.taxonomy else f"the only one with {config.num_classes} classes"
  print(f"wrote {args.output_dir}: {config}\ntaxonomy: {taxonomy} ({chosen})")
  if args.check_input is None:
    return 0
  rel, agreement = check(args.output_dir, args.check_input, args.check_output)
  ok = rel <= args.rtol
  print(
    f"check: max|diff|/max|ref| = {rel:.3g} (rtol {args.rtol:g}), "
    f"argmax agreement = {agreement:.6f}: {'OK' if ok else 'FAILED'}"
  )
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
