"""Figures of a run, drawn with matplotlib: curves, confusion matrix, prediction panels.

Every function builds a `matplotlib.figure.Figure` on its own Agg canvas (no
pyplot, no global backend switch, nothing changes on import) and returns it;
`save_png` writes one and `to_rgb` renders one for TensorBoard. Needs no jax,
so the report tool can draw from a workdir alone.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np

DPI = 100
# Ignored ground-truth pixels get the first of these that no class uses.
IGNORE_CANDIDATES = ((255, 255, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0),
                     (128, 128, 128), (255, 128, 0))
NORMALIZE = ('true', 'pred', 'none')


def new_figure(width_in: float, height_in: float) -> Figure:
  fig = Figure(figsize=(width_in, height_in), dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def save_png(fig: Figure, path: str) -> str:
  """Writes `fig` as PNG (atomically) and returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  fig.savefig(tmp, format='png', dpi=DPI)
  os.replace(tmp, path)
  return path


def to_rgb(fig: Figure) -> np.ndarray:
  """The rendered figure as uint8 (H, W, 3)."""
  canvas = fig.canvas
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------------------
# Colours.


def ignore_color(class_colors: np.ndarray) -> tuple[int, int, int]:
  """A colour for ignored pixels that no class uses."""
  used = {tuple(int(v) for v in c) for c in np.asarray(class_colors)}
  for c in IGNORE_CANDIDATES:
    if c not in used:
      return c
  for v in range(256 ** 3):  # A palette of every candidate: any unused colour.
    c = (v >> 16, (v >> 8) & 255, v & 255)
    if c not in used:
      return c
  raise ValueError('every RGB colour is a class colour')


def colorize(labels: np.ndarray, class_colors: np.ndarray,
             ignore_rgb: Sequence[int]) -> np.ndarray:
  """Class indices (H, W) -> uint8 RGB; labels outside [0, C) get `ignore_rgb`."""
  colors = np.concatenate([np.asarray(class_colors, np.uint8),
                           np.asarray(ignore_rgb, np.uint8)[None]], axis=0)
  labels = np.asarray(labels)
  n = len(class_colors)
  return colors[np.where((labels >= 0) & (labels < n), labels, n)]


# ----------------------------------------------------------------------------
# Curves.


def curves_figure(panels: Sequence[tuple[str, Mapping[str, tuple[Sequence[float],
                                                                   Sequence[float]]], bool]],
                  ) -> Figure:
  """One subplot per (title, {series name: (steps, values)}, log_y) row.

  Non-finite values (and, on a log axis, values <= 0) are not drawn; the
  legend says how many points each series left out.
  """
  fig = new_figure(8, 2.6 * max(len(panels), 1))
  axes = fig.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
  for ax, (title, series, log_y) in zip(axes, panels):
    ax.set_title(title)
    ax.set_xlabel('step')
    drawn = False
    for name, (steps, values) in series.items():
      s, v = np.asarray(steps, np.float64), np.asarray(values, np.float64)
      if s.shape != v.shape:
        raise ValueError(f'{name}: steps and values differ in length ({s.size} vs {v.size})')
      keep = np.isfinite(v) & ((v > 0) if log_y else True)
      omitted = int(np.sum(~keep))
      label = name + (f' ({omitted} omitted)' if omitted else '')
      if keep.any():
        ax.plot(s[keep], v[keep], marker='.' if keep.sum() < 30 else None, label=label)
        drawn = True
    if log_y and drawn:
      ax.set_yscale('log')
    if drawn:
      ax.legend(loc='best', fontsize=8)
      ax.grid(True, alpha=0.3)
    else:
      ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------
# Confusion matrix.


def normalize_confusion(cm: np.ndarray, normalize: Optional[str] = 'true') -> np.ndarray:
  """Row- ('true'), column- ('pred') normalised or raw ('none'/None) counts;
  rows/columns with a zero sum are NaN."""
  cm = np.asarray(cm, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'a confusion matrix must be square, got shape {cm.shape}')
  normalize = normalize or 'none'
  if normalize not in NORMALIZE:
    raise ValueError(f'normalize={normalize!r} is not one of {NORMALIZE}')
  if normalize == 'none':
    return cm
  sums = cm.sum(axis=1, keepdims=True) if normalize == 'true' else cm.sum(axis=0, keepdims=True)
  out = np.full_like(cm, np.nan)
  np.divide(cm, sums, out=out, where=sums > 0)
  return out


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], *, title: str = '',
                     normalize: Optional[str] = 'true') -> Figure:
  """The confusion matrix as a heatmap with class names on both axes; each
  cell's value written in it up to 25 classes; undefined rows (no pixels) grey."""
  values = normalize_confusion(cm, normalize)
  n = values.shape[0]
  if len(class_names) != n:
    raise ValueError(f'{len(class_names)} class names for a {n}x{n} confusion matrix')
  side = min(max(4.0, 0.45 * n + 2.5), 30.0)
  fig = new_figure(side + 1.2, side)
  ax = fig.add_subplot(1, 1, 1)
  masked = np.ma.masked_invalid(values)
  cmap = colormaps['Blues'].with_extremes(bad=(0.82, 0.82, 0.82))
  vmax = 1.0 if normalize in ('true', 'pred') else max(float(np.nanmax(values)) if n else 1, 1)
  im = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=vmax, interpolation='nearest')
  cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  cbar.set_label({'true': 'fraction of the ground-truth class', 'pred':
                  'fraction of the predicted class'}.get(normalize or 'none', 'pixels'))
  ax.set_xticks(range(n), [str(c) for c in class_names], rotation=90, fontsize=8)
  ax.set_yticks(range(n), [str(c) for c in class_names], fontsize=8)
  ax.set_xlabel('predicted class')
  ax.set_ylabel('ground-truth class')
  if title:
    ax.set_title(title)
  if n <= 25:
    for i in range(n):
      for j in range(n):
        v = values[i, j]
        if math.isfinite(v):
          text = f'{100 * v:.0f}' if normalize in ('true', 'pred') else f'{int(v)}'
          ax.text(j, i, text, ha='center', va='center', fontsize=7,
                  color='white' if v > 0.5 * vmax else 'black')
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------
# Prediction panels.

PANEL_COLUMNS = ('image', 'ground truth', 'prediction', 'entropy (nats)')


def prediction_figure(images: np.ndarray, labels: np.ndarray, preds: np.ndarray, *,
                      class_colors: np.ndarray, class_names: Sequence[str],
                      uncertainty: Optional[np.ndarray] = None, num_classes: int = 0,
                      row_titles: Optional[Sequence[str]] = None, title: str = '') -> Figure:
  """Rows of image | ground truth | prediction [| predictive entropy], with
  column headers and a legend of the class colours (and the ignore colour).

  Entropy is drawn on a grey scale from 0 (black, certain) to log(num_classes)
  (white).
  """
  n = len(images)
  cols = 4 if uncertainty is not None else 3
  h, w = np.asarray(labels[0]).shape
  cell = 2.2
  fig = new_figure(cell * cols * max(w / h, 0.5) + 0.2, cell * n + 0.6 + 0.3 * (-(-(len(class_names) + 1) // 6)))
  axes = fig.subplots(n, cols, squeeze=False)
  ign = ignore_color(class_colors)
  for i in range(n):
    panels = [np.asarray(images[i], np.uint8)[:h, :w],
              colorize(labels[i], class_colors, ign), colorize(preds[i], class_colors, ign)]
    if uncertainty is not None:
      panels.append(np.asarray(uncertainty[i], np.float64)[:h, :w])
    for j, ax in enumerate(axes[i]):
      if j == 3:
        ax.imshow(panels[j], cmap='gray', vmin=0.0, vmax=math.log(max(num_classes, 2)),
                  interpolation='nearest')
      else:
        ax.imshow(panels[j], interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(PANEL_COLUMNS[j], fontsize=10)
    if row_titles is not None:
      axes[i][0].set_ylabel(str(row_titles[i]), fontsize=7)
  handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor='black', label=str(name))
             for c, name in zip(class_colors, class_names)]
  handles.append(Patch(facecolor=np.asarray(ign) / 255.0, edgecolor='black',
                       label='ignored (not scored)'))
  fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6), fontsize=8,
             frameon=False)
  if title:
    fig.suptitle(title)
  legend_rows = -(-len(handles) // 6)
  fig.tight_layout(rect=(0, 0.3 * legend_rows / fig.get_figheight(), 1, 1))
  return fig
