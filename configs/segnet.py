r"""SegNet and Bayesian SegNet (Badrinarayanan et al., 2017; Kendall et al., 2017).

A VGG16-BN encoder whose max-pooling indices drive the decoder's unpooling.
Bayesian SegNet adds dropout (p = 0.5) around the three deepest encoder and
decoder stages and keeps it on at test time: evaluate with Monte Carlo
dropout and a predictive-entropy uncertainty map per image with
`--mode=eval --config.eval.mc_samples=N`.

Arguments:
  runlocal          shrink the run for a 2-core CPU
  dataset=NAME      camvid (default, as in the papers) | synthetic | isbi | pets | folder
  bayesian          Bayesian SegNet
  mc_samples=N      eval.mc_samples (default 1 = dropout off; the paper uses 50)

The recipe on CamVid (Badrinarayanan et al. 2017, sec. 4: SGD lr 0.1, momentum
0.9, median-frequency class balancing): SGD lr 0.01 with poly decay, the stable
variant of it with a mean (not summed) loss, weight decay 5e-4, the published
median-frequency weights; crop, augmentation and run length from
configs/common.py's TRAINING table. Other datasets, and runlocal: AdamW (weight
decay 1e-4) at the table's rate; runlocal trains batch 8 for 300 steps.

  python launch.py --config=configs/segnet.py:runlocal --config.data.root=/path/to/camvid
  python launch.py --config=configs/segnet.py:dataset=synthetic,runlocal --workdir=runs/segnet
  python launch.py --config=configs/segnet.py:bayesian,dataset=synthetic,runlocal \
      --workdir=runs/bsegnet
  python launch.py --config=configs/segnet.py:bayesian,dataset=synthetic,runlocal \
      --workdir=runs/bsegnet --mode=eval --config.eval.mc_samples=8
"""

from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='camvid', bayesian=False, mc_samples=1)
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = 'bayesian_segnet' if a.bayesian else 'segnet'
  c.model.backbone = 'vgg16_bn'
  c.model.output_stride = 32
  c.eval.mc_samples = a.mc_samples
  c.schedule.name = 'poly'
  c.schedule.power = 0.9
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 1e-4
  if a.dataset == 'camvid' and not a.runlocal:
    c.optimizer.name = 'sgd'
    c.optimizer.lr = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.loss.class_weights = common.CAMVID_CLASS_WEIGHTS
  if a.runlocal:
    c.batch_size = 8
    c.total_steps = 300
    c.eval_every = c.checkpoint_every = min(c.eval_every, 300)
  return c
