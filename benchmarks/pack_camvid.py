r"""Packs CamVid's train and val splits into one tar small enough to carry to a
device machine (64 MiB with the wheels), and unpacks it there.

  python benchmarks/pack_camvid.py [--src=../shared/data/camvid] \
      [--out=.devdata/camvid.tar] [--quality=95] [--splits=train,val]

Images become JPEG (--quality, 4:4:4 chroma, no subsampling) named <stem>.jpg;
masks stay the original PNG bytes (lossless, so labels are exact). The folder
layout (train/, trainannot/, val/, valannot/) is CamVid's, so the unpacked
folder is a data.root for configs/camvid.py (FolderSource matches a mask by
stem; .jpg is one of data.image_suffixes). JPEG changes the images only: the
script reports the PSNR and mean absolute error against the PNG originals, the
pixel noise a model trained on the packed data sees on top of its
augmentation. The packed val images are also JPEG, so a val mIoU from packed
data is measured on slightly different images than the PNG-based numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def pack(src: Path, out: Path, quality: int = 95, splits=('train', 'val')) -> dict:
  out.parent.mkdir(parents=True, exist_ok=True)
  errs, psnrs, n = [], [], 0
  tmp = out.with_suffix('.tmp')
  with tarfile.open(tmp, 'w') as tar:

    def add(name: str, data: bytes):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      info.mtime = 0
      tar.addfile(info, io.BytesIO(data))

    for split in splits:
      images = sorted(p for p in (src / split).iterdir() if p.suffix.lower() == '.png')
      if not images:
        raise SystemExit(f'{src / split}: no .png images')
      for path in images:
        mask = src / f'{split}annot' / path.name
        if not mask.is_file():
          raise SystemExit(f'{path}: no mask {mask}')
        rgb = np.asarray(Image.open(path).convert('RGB'))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, 'JPEG', quality=quality, subsampling=0)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
        diff = rgb.astype(np.float64) - back
        errs.append(np.abs(diff).mean())
        mse = (diff ** 2).mean()
        psnrs.append(10 * np.log10(255 ** 2 / mse) if mse else float('inf'))
        add(f'{split}/{path.stem}.jpg', buf.getvalue())
        add(f'{split}annot/{path.name}', mask.read_bytes())
        n += 1
  os.replace(tmp, out)
  return {'file': str(out), 'bytes': out.stat().st_size, 'images': n, 'quality': quality,
          'splits': list(splits), 'mean_abs_error': float(np.mean(errs)),
          'psnr_db_median': float(np.median(psnrs)), 'psnr_db_min': float(np.min(psnrs))}


def unpack(archive: Path, dest: Path) -> Path:
  """Extracts regular files only, none leaving `dest` (real paths compared)."""
  dest.mkdir(parents=True, exist_ok=True)
  root = os.path.realpath(dest)
  with tarfile.open(archive, 'r') as tar:
    for member in tar.getmembers():
      target = os.path.realpath(os.path.join(root, member.name))
      if not member.isfile() or os.path.commonpath([root, target]) != root:
        raise ValueError(f'{archive}: member {member.name!r} is not a plain file inside '
                         'the archive folder; refusing to extract it')
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with tar.extractfile(member) as f, open(target, 'wb') as g:
        g.write(f.read())
  return dest


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--src', default=str(ROOT.parent / 'shared' / 'data' / 'camvid'))
  p.add_argument('--out', default=str(ROOT / '.devdata' / 'camvid.tar'))
  p.add_argument('--quality', type=int, default=95)
  p.add_argument('--splits', default='train,val')
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  info = pack(Path(args.src), Path(args.out), args.quality,
              tuple(s for s in args.splits.split(',') if s))
  info['seconds'] = time.perf_counter() - t0
  print(json.dumps(info, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
