"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_hw(text: str) -> tuple[int, int]:
  """'360x480' -> (360, 480) (height x width)."""
  h, sep, w = text.lower().partition('x')
  if not sep:
    raise argparse.ArgumentTypeError(f'{text!r} is not HxW, e.g. 360x480')
  return int(h), int(w)


def load_config(spec: str):
  """A config from 'path/to/config.py[:arg]' (path relative to the repo or cwd)."""
  path, _, arg = spec.partition(':')
  file = Path(path) if Path(path).is_file() else ROOT / path
  module_spec = importlib.util.spec_from_file_location(file.stem, file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def write_json(path: str, result: dict) -> None:
  """Writes `result` to `path` (creating its folder) when `path` is set."""
  if not path:
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
