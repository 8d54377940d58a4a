"""Mutation harness: plants one bug at a time in a copy of the repository and
checks that the tests selected for it fail.

  python -m tests.mutation.run            # every mutant, a score table at the end
  python -m tests.mutation.run --list
  python -m tests.mutation.run --only aux_loss_dropped [--only ...]

For each mutant (tests/mutation/mutants.py) the repository's tracked and
untracked-but-not-ignored files are copied to a temporary directory, the exact
snippet is replaced (it must occur once), and `python -m pytest -x -q` runs the
mutant's test selection there. 'caught' = pytest failed; 'SURVIVED' = it
passed. Before the mutants, the same selections run on the unmutated copy, so
that a test failing for another reason is not counted as a catch. Exit status
1 if any mutant survives or the baseline fails.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutation.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[2]


def copy_repo(dest: Path) -> None:
  files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                         cwd=ROOT, capture_output=True, check=True).stdout.decode().split('\0')
  for name in filter(None, files):
    src = ROOT / name
    if src.is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / name)


def run_tests(repo: Path, tests) -> tuple[bool, float, str]:
  """(passed, seconds, the last lines of pytest's output)."""
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
  start = time.time()
  out = subprocess.run([sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
                        *tests], cwd=repo, env=env, capture_output=True, text=True)
  lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip()]
  return out.returncode == 0, time.time() - start, '\n'.join(lines[-3:])


def first_failure(output: str) -> str:
  for line in output.splitlines():
    if line.startswith('FAILED '):
      return line.split()[1]
  return output.splitlines()[-1] if output else ''


def apply(repo: Path, m) -> None:
  path = repo / m.path
  text = path.read_text()
  if text.count(m.original) != 1:
    raise SystemExit(f'mutant {m.name}: the snippet occurs {text.count(m.original)} times in '
                     f'{m.path} (must be exactly once): {m.original!r}')
  path.write_text(text.replace(m.original, m.replacement))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--only', action='append', default=[], help='run this mutant (repeatable)')
  parser.add_argument('--list', action='store_true', help='list the mutants and exit')
  parser.add_argument('--no-baseline', action='store_true',
                      help='skip running the selections on the unmutated copy')
  args = parser.parse_args(argv)
  known = {m.name: m for m in MUTANTS}
  if args.list:
    for m in MUTANTS:
      print(f'{m.name:40s} {m.path:32s} {m.why}')
    return 0
  unknown = [n for n in args.only if n not in known]
  if unknown:
    raise SystemExit(f'unknown mutant(s) {unknown}; --list shows them')
  selected = [known[n] for n in args.only] if args.only else list(MUTANTS)
  rows, bad = [], False
  with tempfile.TemporaryDirectory(prefix='segjax_mutation_') as tmp:
    base = Path(tmp) / 'base'
    base.mkdir()
    copy_repo(base)
    for m in selected:  # Every snippet is present before anything runs.
      text = (base / m.path).read_text()
      if text.count(m.original) != 1:
        raise SystemExit(f'mutant {m.name}: snippet found {text.count(m.original)} times in '
                         f'{m.path}: {m.original!r}')
    if not args.no_baseline:
      selections = sorted({t for m in selected for t in m.tests})
      ok, secs, out = run_tests(base, selections)
      print(f'baseline ({len(selections)} selections): {"pass" if ok else "FAIL"} '
            f'in {secs:.0f} s', flush=True)
      if not ok:
        print(out)
        return 1
    for m in selected:
      repo = Path(tmp) / m.name
      shutil.copytree(base, repo)
      apply(repo, m)
      passed, secs, out = run_tests(repo, m.tests)
      status = 'SURVIVED' if passed else 'caught'
      bad |= passed
      rows.append((m.name, status, '' if passed else first_failure(out), secs))
      print(f'{m.name:40s} {status:8s} {secs:6.0f} s  {rows[-1][2]}', flush=True)
      shutil.rmtree(repo)
  caught = sum(r[1] == 'caught' for r in rows)
  print(f'\nscore: {caught}/{len(rows)} caught\n')
  print('| mutant | result | first failing test | seconds |')
  print('|---|---|---|---|')
  for name, status, test, secs in rows:
    print(f'| {name} | {status} | {test} | {secs:.0f} |')
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
