"""Plots without a plotting library: SVG line charts and a confusion-matrix heatmap.

`line_chart_svg` returns an inline SVG string (axes, ticks, grid, legend, one
`<polyline data-series="name">` per series) for HTML reports.
`confusion_heatmap` draws a confusion matrix as an RGB image with Pillow:
white (0) to dark blue (1) on a sequential ramp, class names on both axes and,
when cells are at least 20 px, each cell's value written in it.
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Categorical line colours (Tableau 10).
LINE_COLORS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
               '#7f7f7f', '#bcbd22', '#17becf')

# ColorBrewer "Blues" (9 classes): a sequential ramp whose luminance falls
# monotonically from 0 (near white) to 1 (dark blue).
RAMP = np.array([(247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225),
                 (107, 174, 214), (66, 146, 198), (33, 113, 181), (8, 81, 156),
                 (8, 48, 107)], np.float64)
# Cells whose value is undefined (a normalising row/column sum of 0).
NAN_COLOR = (210, 210, 210)
MIN_ANNOTATED_CELL = 20

_NORMALIZE = ('true', 'pred', 'all', 'none')


# ----------------------------------------------------------------------------
# Line charts.


def nice_ticks(lo: float, hi: float, max_ticks: int = 6, min_step: float = 0.0) -> list[float]:
  """Round tick values (1, 2 or 5 x 10^k apart, at least `min_step`) covering
  [lo, hi]: the first tick is <= lo and the last >= hi."""
  if not (math.isfinite(lo) and math.isfinite(hi)):
    raise ValueError(f'tick range [{lo}, {hi}] is not finite')
  if hi < lo:
    lo, hi = hi, lo
  if hi == lo:
    pad = abs(lo) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
  raw = (hi - lo) / max(max_ticks - 1, 1)
  mag = 10.0 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
  step = max(step, min_step)
  first = math.floor(lo / step + 1e-9)
  last = math.ceil(hi / step - 1e-9)
  return [_clean(i * step, step) for i in range(first, last + 1)]


def _clean(value: float, step: float) -> float:
  """value rounded to the precision of `step` (no 0.30000000000000004)."""
  digits = max(0, -math.floor(math.log10(step)) + 1)
  return round(value, digits)


def log_ticks(lo: float, hi: float) -> list[float]:
  """Ticks for a log axis covering [lo, hi] (both > 0): powers of ten, with
  2x and 5x ticks added when the range spans at most two decades."""
  if not (lo > 0 and hi > 0):
    raise ValueError(f'log axis range [{lo}, {hi}] must be positive')
  lo_e = math.floor(math.log10(min(lo, hi)) + 1e-12)
  hi_e = math.ceil(math.log10(max(lo, hi)) - 1e-12)
  if hi_e == lo_e:
    hi_e += 1
  decades = list(range(lo_e, hi_e + 1))
  if len(decades) <= 3:
    ticks = [m * 10.0 ** e for e in decades for m in (1, 2, 5)]
    ticks = [t for t in ticks if t <= 10.0 ** hi_e * (1 + 1e-9)]
    # Trim to the ticks just around the data.
    below = [t for t in ticks if t <= lo * (1 + 1e-9)]
    above = [t for t in ticks if t >= hi * (1 - 1e-9)]
    start, end = ticks.index(below[-1]), ticks.index(above[0])
    return [float(f'{t:.12g}') for t in ticks[start:end + 1]]
  every = math.ceil(len(decades) / 8)
  return [float(f'1e{e}') for e in decades[::every]] + (
      [float(f'1e{decades[-1]}')] if (len(decades) - 1) % every else [])


def format_number(v: float) -> str:
  """Compact tick label: 0.001, 0.5, 12, 1500, 2e-05, 1.2e+06."""
  if v == 0:
    return '0'
  if 1e-3 <= abs(v) < 1e5:
    return f'{v:.6g}'
  return f'{v:.2g}'


def _finite_points(steps, values, log_y: bool) -> tuple[np.ndarray, np.ndarray, int]:
  x = np.asarray(steps, np.float64).reshape(-1)
  y = np.asarray(values, np.float64).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f'steps ({x.size}) and values ({y.size}) differ in length')
  ok = np.isfinite(x) & np.isfinite(y)
  if log_y:
    ok &= y > 0
  order = np.argsort(x[ok], kind='stable')
  return x[ok][order], y[ok][order], int((~ok).sum())


def line_chart_svg(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                   title: str, y_label: str, log_y: bool = False, width: int = 640,
                   height: int = 320, x_label: str = 'step', max_markers: int = 30,
                   integer_x: bool = True) -> str:
  """An inline SVG line chart.

  Args:
    series: name -> (steps, values). Each series becomes one
      `<polyline data-series="name">` with one point per finite value (and, on a
      log axis, per positive value); the legend counts the points left out.
      Series with at most `max_markers` points also get a circle per point.
    title: drawn above the plot.
    y_label: the y-axis title.
    log_y: logarithmic y axis.
    width: SVG width in pixels.
    height: SVG height in pixels.
    x_label: the x-axis title.
    max_markers: see `series`.
    integer_x: x ticks at whole numbers only (training steps).

  Returns:
    An `<svg>` element as a string (no XML declaration), for embedding in HTML.
  """
  esc = html.escape
  data = {}
  for name, (steps, values) in series.items():
    data[str(name)] = _finite_points(steps, values, log_y)
  notes = {n: f' ({d[2]} omitted)' if d[2] else '' for n, d in data.items()}
  legend_chars = max([len(n) + len(notes[n]) for n in data] + [0])
  legend_w = min(max(legend_chars * 6.5 + 28, 90), width * 0.4) if data else 0
  left, right, top, bottom = 64.0, 12.0 + legend_w, 30.0, 42.0
  pw, ph = width - left - right, height - top - bottom
  if pw < 40 or ph < 40:
    raise ValueError(f'chart size {width}x{height} leaves no room for the plot')
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">',
         f'<title>{esc(title)}</title>',
         f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
         f'<text x="{left + pw / 2:.1f}" y="18" text-anchor="middle" font-size="13" '
         f'font-weight="bold">{esc(title)}</text>']
  xs = np.concatenate([d[0] for d in data.values()]) if data else np.zeros(0)
  ys = np.concatenate([d[1] for d in data.values()]) if data else np.zeros(0)
  if xs.size == 0:
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle" '
               'fill="#666">no data</text>')
    out.append('</svg>')
    return '\n'.join(out)

  xt = nice_ticks(float(xs.min()), float(xs.max()), min_step=1.0 if integer_x else 0.0)
  x0, x1 = xt[0], xt[-1]
  if log_y:
    yt = log_ticks(float(ys.min()), float(ys.max()))
    ty = [math.log10(t) for t in yt]
  else:
    yt = nice_ticks(float(ys.min()), float(ys.max()))
    ty = list(yt)
  y0, y1 = ty[0], ty[-1]

  def px(x):
    return left + (x - x0) / (x1 - x0) * pw

  def py(y):
    v = math.log10(y) if log_y else y
    return top + ph - (v - y0) / (y1 - y0) * ph

  # Grid, ticks and tick labels.
  for t in xt:
    x = px(t)
    out.append(f'<line x1="{x:.2f}" y1="{top}" x2="{x:.2f}" y2="{top + ph}" stroke="#e5e5e5"/>')
    out.append(f'<line x1="{x:.2f}" y1="{top + ph}" x2="{x:.2f}" y2="{top + ph + 4}" '
               'stroke="black"/>')
    out.append(f'<text x="{x:.2f}" y="{top + ph + 16}" text-anchor="middle">'
               f'{esc(format_number(t))}</text>')
  for t in yt:
    y = py(t)
    out.append(f'<line x1="{left}" y1="{y:.2f}" x2="{left + pw}" y2="{y:.2f}" stroke="#e5e5e5"/>')
    out.append(f'<line x1="{left - 4}" y1="{y:.2f}" x2="{left}" y2="{y:.2f}" stroke="black"/>')
    out.append(f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end">'
               f'{esc(format_number(t))}</text>')
  # Axes and titles.
  out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>')
  out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>')
  out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">'
             f'{esc(x_label)}</text>')
  cy = top + ph / 2
  out.append(f'<text x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">'
             f'{esc(y_label + (" (log scale)" if log_y else ""))}</text>')

  # Series and legend.
  lx = left + pw + 14
  for i, (name, (x, y, _)) in enumerate(data.items()):
    color = LINE_COLORS[i % len(LINE_COLORS)]
    points = ' '.join(f'{px(a):.2f},{py(b):.2f}' for a, b in zip(x, y))
    out.append(f'<polyline data-series="{esc(name)}" fill="none" stroke="{color}" '
               f'stroke-width="1.5" stroke-linejoin="round" points="{points}"/>')
    if x.size <= max_markers:
      for a, b in zip(x, y):
        out.append(f'<circle cx="{px(a):.2f}" cy="{py(b):.2f}" r="2.5" fill="{color}">'
                   f'<title>{esc(name)} @ {format_number(a)}: {b:.6g}</title></circle>')
    ly = top + 8 + 16 * i
    out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 16}" y2="{ly}" stroke="{color}" '
               'stroke-width="2.5"/>')
    out.append(f'<text x="{lx + 20}" y="{ly + 4}">{esc(name)}{esc(notes[name])}</text>')
  out.append('</svg>')
  return '\n'.join(out)


# ----------------------------------------------------------------------------
# Confusion-matrix heatmap.


def ramp_colors(values: np.ndarray) -> np.ndarray:
  """Values in [0, 1] -> uint8 RGB on RAMP (NaN -> NAN_COLOR)."""
  v = np.asarray(values, np.float64)
  nan = np.isnan(v)
  t = np.clip(np.where(nan, 0.0, v), 0.0, 1.0) * (len(RAMP) - 1)
  lo = np.floor(t).astype(int)
  hi = np.minimum(lo + 1, len(RAMP) - 1)
  frac = (t - lo)[..., None]
  rgb = RAMP[lo] * (1 - frac) + RAMP[hi] * frac
  rgb = np.round(rgb).astype(np.uint8)
  rgb[nan] = NAN_COLOR
  return rgb


def normalize_confusion(cm: np.ndarray, normalize: str | None = 'true') -> np.ndarray:
  """float64 matrix: 'true' divides each row by its sum (recall), 'pred' each
  column (precision), 'all' by the total; None or 'none' keeps counts.
  Rows/columns with a zero sum become NaN."""
  cm = np.asarray(cm, np.float64)
  mode = 'none' if normalize is None else str(normalize)
  if mode not in _NORMALIZE:
    raise ValueError(f"normalize={normalize!r} is not one of 'true', 'pred', 'all', None")
  if mode == 'none':
    return cm
  if mode == 'true':
    den = cm.sum(axis=1, keepdims=True)
  elif mode == 'pred':
    den = cm.sum(axis=0, keepdims=True)
  else:
    den = np.full((1, 1), cm.sum())
  den = np.broadcast_to(den, cm.shape)
  out = np.full(cm.shape, np.nan)
  np.divide(cm, den, out=out, where=den > 0)
  return out


def _font(size: int):
  return ImageFont.load_default(size=size)


def _text_size(font, text: str) -> tuple[int, int]:
  box = font.getbbox(text)
  return box[2] - box[0], box[3] - box[1]


def _short(name: str, limit: int = 24) -> str:
  return name if len(name) <= limit else name[:limit - 1] + '~'


@dataclasses.dataclass(frozen=True)
class HeatmapLayout:
  """Where confusion_heatmap puts things: cell (i, j) (row = ground truth i,
  column = prediction j) covers x in [grid_x + j*cell, grid_x + (j+1)*cell),
  y in [grid_y + i*cell, grid_y + (i+1)*cell)."""
  grid_x: int
  grid_y: int
  cell: int
  width: int
  height: int
  font_size: int


def auto_cell_size(num_classes: int) -> int:
  """32 px cells up to 50 classes, then smaller (12 px at 134+ classes)."""
  return int(np.clip(1600 // max(num_classes, 1), 12, 32))


def heatmap_layout(class_names: Sequence[str], cell_size: int | None = None) -> HeatmapLayout:
  """The geometry of confusion_heatmap's image for these classes."""
  n = len(class_names)
  cell = int(cell_size) if cell_size else auto_cell_size(n)
  if cell < 4:
    raise ValueError(f'cell_size={cell_size} is too small (4 px at least)')
  font_size = int(min(10, max(6, cell - 4)))
  font = _font(font_size)
  label_w = max([_text_size(font, _short(str(s)))[0] for s in class_names] + [8])
  title_h = 16
  axis_h = 14   # 'predicted' / 'ground truth' axis titles.
  m = 6
  grid_x = m + axis_h + label_w + 6
  grid_y = m + title_h + axis_h + label_w + 6
  colorbar_w = 12 + 6 + 34
  width = grid_x + n * cell + 10 + colorbar_w + m
  height = max(grid_y + n * cell + m, grid_y + 60 + m)
  return HeatmapLayout(grid_x, grid_y, cell, width, height, font_size)


def _compact_count(v: float) -> str:
  v = float(v)
  for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if v >= div:
      s = f'{v / div:.1f}' if v / div < 10 else f'{v / div:.0f}'
      return s + suffix
  return f'{v:.0f}'


def confusion_heatmap(cm: np.ndarray, class_names: Sequence[str] | None = None, *,
                      normalize: str | None = 'true', cell_size: int | None = None,
                      title: str | None = None) -> np.ndarray:
  """A confusion matrix as a heatmap image.

  Args:
    cm: (C, C) counts, cm[t, p] = pixels of ground truth t predicted as p.
    class_names: C names (default class_0..); rows are labelled on the left
      (ground truth), columns on top (predicted).
    normalize: 'true' (default): each row divided by its sum, so a cell is the
      fraction of class t's pixels predicted as p and the diagonal is the
      per-class accuracy; 'pred': columns (precision); 'all': the total;
      None: raw counts, coloured relative to the largest count. Rows/columns
      with no pixels are drawn grey.
    cell_size: pixels per cell; default auto_cell_size(C). The image grows
      with the class count.
    title: text above the matrix (default says how it is normalised).

  Returns:
    uint8 (H, W, 3) RGB. Colours run from near white (0) to dark blue (1, or
    the largest count); cells of at least 20 px carry their value (percent
    when normalised, a compact count otherwise). Geometry: heatmap_layout.
  """
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
    raise ValueError(f'confusion matrix must be square (C, C), got shape {cm.shape}')
  if not np.issubdtype(cm.dtype, np.number) or np.any(np.asarray(cm, np.float64) < 0):
    raise ValueError('confusion matrix must hold non-negative counts')
  n = cm.shape[0]
  names = [str(s) for s in class_names] if class_names is not None else [
      f'class_{i}' for i in range(n)]
  if len(names) != n:
    raise ValueError(f'{len(names)} class names for a {n}x{n} confusion matrix')
  values = normalize_confusion(cm, normalize)
  counts = normalize is None or normalize == 'none'
  vmax = float(np.nanmax(values)) if counts and np.any(values > 0) else 1.0
  scaled = values / vmax if counts else values

  lay = heatmap_layout(names, cell_size)
  cell = lay.cell
  font = _font(lay.font_size)
  img = Image.new('RGB', (lay.width, lay.height), 'white')
  draw = ImageDraw.Draw(img)
  if title is None:
    title = {'true': 'confusion matrix, % of each true class (rows)',
             'pred': 'confusion matrix, % of each predicted class (columns)',
             'all': 'confusion matrix, % of all pixels',
             'none': 'confusion matrix, pixel counts'}['none' if counts else str(normalize)]
  title_font = _font(11)
  draw.text((6, 4), title, fill='black', font=title_font)

  # Cells.
  colors = ramp_colors(scaled)
  grid = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
  arr = np.asarray(img).copy()
  arr[lay.grid_y:lay.grid_y + n * cell, lay.grid_x:lay.grid_x + n * cell] = grid
  img = Image.fromarray(arr)
  draw = ImageDraw.Draw(img)
  if cell >= MIN_ANNOTATED_CELL:
    value_font = font
    for i in range(n):
      for j in range(n):
        v = values[i, j]
        if np.isnan(v):
          continue
        text = _compact_count(v) if counts else f'{100 * v:.0f}'
        tw, th = _text_size(value_font, text)
        size = lay.font_size
        f = value_font
        while tw > cell - 2 and size > 6:
          size -= 1
          f = _font(size)
          tw, th = _text_size(f, text)
        if tw > cell - 2:
          continue
        fill = 'white' if scaled[i, j] > 0.5 else 'black'
        cx = lay.grid_x + j * cell + cell / 2
        cy = lay.grid_y + i * cell + cell / 2
        draw.text((cx, cy), text, fill=fill, font=f, anchor='mm')
  # Thin frame around the grid.
  draw.rectangle([lay.grid_x - 1, lay.grid_y - 1, lay.grid_x + n * cell, lay.grid_y + n * cell],
                 outline=(120, 120, 120))

  # Row labels (right-aligned, left of the grid) and column labels (rotated).
  for i, name in enumerate(names):
    text = _short(name)
    tw, _ = _text_size(font, text)
    draw.text((lay.grid_x - 4 - tw, lay.grid_y + i * cell + cell / 2), text, fill='black',
              font=font, anchor='lm')
  for j, name in enumerate(names):
    text = _short(name)
    tw, th = _text_size(font, text)
    label = Image.new('RGB', (tw + 2, lay.font_size + 4), 'white')
    ImageDraw.Draw(label).text((1, (lay.font_size + 4) / 2), text, fill='black', font=font,
                               anchor='lm')
    label = label.rotate(90, expand=True)
    x = int(lay.grid_x + j * cell + cell / 2 - label.width / 2)
    y = lay.grid_y - 4 - label.height
    img.paste(label, (x, y))
  draw = ImageDraw.Draw(img)
  # Axis titles.
  axis_font = _font(10)
  draw.text((lay.grid_x + n * cell / 2, 6 + 16 + 7), 'predicted', fill='black', font=axis_font,
            anchor='mm')
  gt = Image.new('RGB', (_text_size(axis_font, 'ground truth')[0] + 4, 14), 'white')
  ImageDraw.Draw(gt).text((2, 7), 'ground truth', fill='black', font=axis_font, anchor='lm')
  gt = gt.rotate(90, expand=True)
  gy = int(lay.grid_y + n * cell / 2 - gt.height / 2)
  img.paste(gt, (6, max(gy, lay.grid_y)))
  draw = ImageDraw.Draw(img)

  # Colour bar with its end labels.
  bx = lay.grid_x + n * cell + 10
  bh = max(n * cell, 60)
  ramp = ramp_colors(np.linspace(1.0, 0.0, bh))
  bar = np.repeat(ramp[:, None, :], 12, axis=1)
  arr = np.asarray(img).copy()
  arr[lay.grid_y:lay.grid_y + bh, bx:bx + 12] = bar
  img = Image.fromarray(arr)
  draw = ImageDraw.Draw(img)
  draw.rectangle([bx - 1, lay.grid_y - 1, bx + 12, lay.grid_y + bh], outline=(120, 120, 120))
  top_label = _compact_count(vmax) if counts else '100%'
  draw.text((bx + 16, lay.grid_y), top_label, fill='black', font=font, anchor='lt')
  draw.text((bx + 16, lay.grid_y + bh), '0' if counts else '0%', fill='black', font=font,
            anchor='lb')
  return np.asarray(img, np.uint8)
