import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
