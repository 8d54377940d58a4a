r"""SegNet and Bayesian SegNet (Badrinarayanan et al., 2017; Kendall et al., 2017).

A VGG16-BN encoder whose max-pooling indices drive the decoder's unpooling.
Bayesian SegNet adds dropout (p = 0.5) around the three deepest encoder and
decoder stages and keeps it on at test time: evaluate with Monte Carlo
dropout and a predictive-entropy uncertainty map per image with
`--mode=eval --config.eval.mc_samples=N`.

Arguments:
  runlocal          shrink the run for a 2-core CPU
  dataset=NAME      camvid (default, as in the papers) | synthetic | isbi | pets
  bayesian          Bayesian SegNet
  mc_samples=N      eval.mc_samples (default 1 = dropout off; the paper uses 50)

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
  common.set_dataset(c, a.dataset)
  c.model.name = 'bayesian_segnet' if a.bayesian else 'segnet'
  c.model.backbone = 'vgg16_bn'
  c.model.output_stride = 32
  c.eval.mc_samples = a.mc_samples
  common.recipe(c, a.dataset, a.runlocal)
  if a.dataset == 'camvid' and not a.runlocal:
    # SegNet on CamVid: SGD lr 0.1 momentum 0.9 with median-frequency
    # balancing (Badrinarayanan et al. 2017, sec. 4); 0.01 with poly decay is
    # the stable variant of that recipe with a mean (not summed) loss.
    common.paper_sgd(c, lr=0.01, weight_decay=5e-4)
    c.loss.class_weights = common.CAMVID_CLASS_WEIGHTS
  if a.runlocal:
    common.shorten_for_cpu(c)
  return c
