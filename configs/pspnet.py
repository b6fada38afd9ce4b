"""MSeg-3m with PSPNet-50: `--config=configs/pspnet.py:1080p` (or 480p, 720p).

mseg-semantic has no PSPNet training yaml (every one has `arch: hrnet`), so this is the mseg-3m
recipe of configs/mseg_3m.py (datasets, crops, batch, steps, SGD, poly lr) with the PSPNet parts
of the official code: `PSPNet(layers=50, zoom_factor=8)`, the aux loss with `aux_weight` 0.4
(the yamls' value) and `get_optimizer`'s 10x lr for ppm, cls and aux. Like the official PSPNet it
starts from the ImageNet ResNet-50 with the deep stem: `--config.init.checkpoint=DIR` from
`tools/convert_torch_weights.py --backbone-only --input resnet50_v2.pth --output-dir DIR`
(`--config.init.kind=none`: random init).
"""

import ml_collections

from configs import mseg_3m


def get_config(arg: str = "1080p") -> ml_collections.ConfigDict:
  config = mseg_3m.get_config(arg)
  config.model.preset = "pspnet50"  # arch: PSPNetConfig fields to replace (layers, aux_weight)
  config.optim.lr_multipliers = dict(ppm=10.0, cls=10.0, aux=10.0)
  return config
