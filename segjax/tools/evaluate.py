r"""Evaluate a checkpoint of a trained run on any split.

  segjax evaluate --workdir=runs/deeplabv3plus
  segjax evaluate --workdir=runs/deeplabv3plus --checkpoint=best --config.eval.split=test
  segjax evaluate --workdir=runs/camvid --config.eval.mode=slide --config.eval.flip=True \
      --out=/tmp/camvid_eval          # a read-only run: the results go elsewhere

(`python -m segjax.tools.evaluate` and `python launch.py --mode=eval` run the
same code.) The run's own config is used (segjax.run_dir): `--config.eval.*`
(split, mode, scales, flip, batch_size, mc_samples, num_panel_images, ...)
and `--config.data.root` may change it; other keys are refused. The metrics
table is printed first (and that of the EMA weights when the run kept them);
then `--out` (default: the run directory) gets eval/<split>_<step>.json / .md /
_confusion.png and the prediction images. If those cannot be written, the
command says so in one line and exits 1; the metrics are already on stdout.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

from absl import flags
import jax

from segjax import cli
from segjax import evaluate as eval_lib
from segjax import metrics as metrics_lib
from segjax import run_dir
from segjax import sharding as sharding_lib


class ResultsNotWritten(ValueError):
  """The metrics were computed and printed, but their files could not be written."""


def run(workdir: str, overrides: Mapping[str, Any] | None = None, *,
        checkpoint: str | None = None, out: str | None = None) -> dict:
  """Evaluates checkpoint `checkpoint` of the run in `workdir`.

  Args:
    workdir: the run directory.
    overrides: flat config keys -> values (eval.* and data.root only).
    checkpoint: 'latest', 'best' or a step; None: overrides['eval.checkpoint']
      or 'latest'.
    out: where the result files go (default `workdir`).

  Returns:
    {'step', 'split', 'path' (the JSON written), metrics..., 'ema': EMA scalars
    when the run kept an EMA}.

  Raises:
    ResultsNotWritten: after printing the metrics, when `out` is not writable.
  """
  mesh = sharding_lib.make_mesh()
  loaded = run_dir.load_run(workdir, checkpoint, overrides=overrides, mesh=mesh)
  config, step = loaded.config, loaded.step
  split = config.eval.split or config.data.val_split
  eval_step = eval_lib.make_eval_step(loaded.model, config, mesh)
  result, panel = eval_lib.evaluate_split(eval_step, loaded.variables, config, split, mesh,
                                          num_panel_images=int(config.eval.num_panel_images))
  ema_result = None
  if loaded.ema_variables is not None:  # Trained with ema.decay > 0: evaluate the average too.
    ema_result, _ = eval_lib.evaluate_split(eval_step, loaded.ema_variables, config, split, mesh)
    result['ema'] = eval_lib.scalar_metrics(ema_result)
  main_process = jax.process_index() == 0
  if main_process:  # Printed before anything is written: a read-only run still shows them.
    print(metrics_lib.format_table(
        result, title=f'{split} @ step {step} ({config.eval.checkpoint}), '
        f'{result["num_examples"]} images'), flush=True)
    if ema_result is not None:
      print(metrics_lib.format_table(ema_result, title=f'{split} @ step {step}, EMA weights'),
            flush=True)
  out = out or workdir
  try:
    path = eval_lib.write_result(out, split, step, result)
    if ema_result is not None:
      eval_lib.write_result(out, split, step, ema_result, suffix='_ema')
    if panel is not None and main_process:
      image_dir = eval_lib.write_prediction_images(out, split, step, panel, config)
      print(f'Wrote prediction images to {image_dir}', flush=True)
  except OSError as e:
    raise ResultsNotWritten(
        f'the metrics above were computed, but their files could not be written to {out} '
        f'({type(e).__name__}: {e}); pass --out=DIR to write them elsewhere') from e
  if main_process:
    print(f'Wrote {path}', flush=True)
  return {'step': step, 'split': split, 'path': path, **result}


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('workdir', None, 'The training run directory.', required=True,
                      flag_values=fv)
  flags.DEFINE_string('checkpoint', None, "'latest', 'best' or a step (default: "
                      '--config.eval.checkpoint, else latest)', flag_values=fv)
  flags.DEFINE_string('out', None, 'Where the result files go (default: --workdir).',
                      flag_values=fv)
  cli.define_run_overrides(fv)


def main_run(workdir: str, overrides: Mapping[str, Any] | None = None, *,
             checkpoint: str | None = None, out: str | None = None) -> bool:
  """`run` for a command line: False (after one line on stderr) when the
  results could not be written."""
  try:
    run(workdir, overrides, checkpoint=checkpoint, out=out)
  except ResultsNotWritten as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    return False
  return True


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  ok = main_run(fv.workdir, cli.run_overrides(fv), checkpoint=fv.checkpoint, out=fv.out)
  return 0 if ok else 1


if __name__ == '__main__':
  cli.run(main, define_flags)
