"""Bad input, one clear line: error kinds with exit codes, the CLI wrapper, batch failure reports, checked
text/CSV reading and temp-then-rename outputs (shared by generate, extract_features and evaluate).

Exit status: 2 for a usage error (a flag's value or a combination of flags), 1 for an input error (a file,
row or checkpoint that cannot be used; also a batch in which some items failed), 0 otherwise.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import pathlib
import sys
import traceback
from typing import Callable, Iterator, Optional


class UsageError(ValueError):
  """A flag's value or a combination of flags is not accepted (exit status 2)."""
  exit_code = 2


class InputError(ValueError):
  """A file, CSV row or checkpoint cannot be used (exit status 1)."""
  exit_code = 1


# Errors whose message already names the input and says what is wrong: printed without their type (so do
# exceptions whose class sets plain_message = True, e.g. video.io.VideoError).
_KNOWN = (UsageError, InputError, FileNotFoundError, NotADirectoryError, PermissionError, UnicodeError)


def one_line(e: BaseException, limit: int = 600) -> str:
  """An exception as one line: known kinds by their message, others prefixed with their type."""
  msg = " ".join(str(e).split()) or type(e).__name__
  if len(msg) > limit:
    msg = msg[:limit] + f" ... ({len(msg) - limit} more characters)"
  return msg if is_known(e) else f"{type(e).__name__}: {msg}"


def is_known(e: BaseException) -> bool:
  """An error whose message says it all (printed alone); subclasses of the built-in kinds (e.g.
  MissingWeightsError) keep their more telling type name."""
  return isinstance(e, (UsageError, InputError)) or type(e) in _KNOWN or bool(getattr(e, "plain_message", False))


def exit_code(e: BaseException) -> int:
  return int(getattr(e, "exit_code", 1))


def run_cli(body: Callable[[], Optional[int]], *, verbose: bool = False, prog: str = "") -> None:
  """Runs a tool's body; an exception becomes one line on stderr and exit status 2 (usage) or 1.

  verbose=True prints the traceback too. A body may return an exit status (a batch with failures: 1).
  """
  try:
    rc = body()
  except KeyboardInterrupt:
    raise
  except SystemExit:
    raise
  except BaseException as e:  # noqa: BLE001 -- the point: every error is one line unless --verbose
    if verbose:
      traceback.print_exc()
    hint = "" if verbose or is_known(e) else " (--verbose for the traceback)"
    print(f"{prog + ': ' if prog else ''}error: {one_line(e)}{hint}", file=sys.stderr, flush=True)
    sys.exit(exit_code(e))
  sys.exit(int(rc or 0))


def absl_flags_parser(argv):
  """app.run(flags_parser=...) that exits 2 (not absl's 1) with one line for an unparsable flag."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"{pathlib.Path(argv[0]).name}: error: {e} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------

def number(value, where: str, *, lo=None, hi=None, lo_open=False, hi_open=False, integer=False,
           accepted: str = "", error=UsageError) -> float:
  """`value` as a finite number in the range, else `error` naming `where` and the accepted range."""
  def rng():
    if accepted:
      return accepted
    a = "" if lo is None else ("> " if lo_open else ">= ") + f"{lo:g}"
    b = "" if hi is None else ("< " if hi_open else "<= ") + f"{hi:g}"
    return ("an integer " if integer else "a number ") + " and ".join(x for x in (a, b) if x)

  try:
    x = float(str(value).strip()) if isinstance(value, str) else float(value)
  except (TypeError, ValueError):
    raise error(f"{where}: {value!r} is not a number (accepted: {rng()})") from None
  ok = math.isfinite(x) and not (integer and x != int(x))
  ok = ok and (lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or (x < hi if hi_open else x <= hi))
  if not ok:
    raise error(f"{where}: {value!r} is out of range (accepted: {rng()})")
  return int(x) if integer else x


def utf8_text(s: str, where: str) -> str:
  """A command-line / file string that must be valid UTF-8 (argv keeps undecodable bytes as surrogates)."""
  try:
    s.encode("utf-8")
  except UnicodeEncodeError as e:
    bad = s[e.start:e.end].encode("utf-8", "surrogateescape")
    raise InputError(f"{where}: not valid UTF-8 (byte {bad[:1].hex()} at character {e.start}); "
                     "give the text as UTF-8") from None
  return s


def decode_utf8(data: bytes, where: str) -> str:
  """bytes -> str as UTF-8 (a BOM is dropped); else InputError naming the line and byte."""
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise InputError(f"{where}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
                     "save the file as UTF-8") from None


def read_text(path, what: str = "file") -> str:
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: no such {what}")
  if p.is_dir():
    raise InputError(f"{p}: is a directory, expected a {what}")
  return decode_utf8(p.read_bytes(), str(p))


def read_csv(path, what: str = "CSV") -> tuple[list[str], list[tuple[int, dict]]]:
  """(header, [(line number, row)]) of a UTF-8 CSV with a header row; InputError for an unreadable file."""
  p = pathlib.Path(path)
  text = read_text(p, what)
  try:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = []
    for r in reader:
      rows.append((reader.line_num, r))
  except csv.Error as e:
    raise InputError(f"{p}:{reader.line_num}: not a readable CSV ({e})") from None
  if not header:
    raise InputError(f"{p}: empty {what} (needs a header row)")
  return header, rows


def tree_mismatch(want: dict, found: dict, what: str, limit: int = 3, error=InputError) -> None:
  """{path: shape} of what a model wants vs what a checkpoint holds: one line with the first differences
  of each kind (a wrong checkpoint's full tree would be hundreds of KB)."""
  missing = sorted(set(want) - set(found))
  unexpected = sorted(set(found) - set(want))
  shapes = sorted(k for k in set(want) & set(found) if tuple(want[k]) != tuple(found[k]))
  if not (missing or unexpected or shapes):
    return

  def few(keys, fmt=str):
    more = f", ... {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(fmt(k) for k in keys[:limit]) + more

  parts = []
  if missing:
    parts.append(f"{len(missing)} missing ({few(missing)})")
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
  if shapes:
    parts.append(f"{len(shapes)} of another shape ("
                 + few(shapes, lambda k: f"{k}: checkpoint {tuple(found[k])} vs model {tuple(want[k])}") + ")")
  raise error(f"{what}: {'; '.join(parts)} of {len(want)} arrays")


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------

def writable_dir(path, flag: str = "--out_dir") -> pathlib.Path:
  """Creates `path` if needed and proves it writable with a probe file, before any work."""
  p = pathlib.Path(path).expanduser()
  if p.exists() and not p.is_dir():
    raise InputError(f"{flag} {p}: exists and is not a directory")
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise InputError(f"{flag} {p}: not writable ({e.strerror or e})") from None
  return p


def tmp_name(final: pathlib.Path) -> pathlib.Path:
  """A hidden name beside `final` with the same suffix (writers pick the format from it)."""
  final = pathlib.Path(final)
  return final.with_name(f".tmp-{os.getpid()}-{final.name}")


@contextlib.contextmanager
def atomic_files(*finals) -> Iterator[list[pathlib.Path]]:
  """Yields temp paths for `finals`; on success renames every one into place, on error deletes them all.

  So an item's outputs appear together or not at all (a failed item leaves nothing half-written).
  """
  finals = [pathlib.Path(f) for f in finals]
  tmps = [tmp_name(f) for f in finals]
  try:
    yield tmps
    for t, f in zip(tmps, finals):
      if t.exists():
        os.replace(t, f)
  finally:
    for t in tmps:
      with contextlib.suppress(FileNotFoundError):
        t.unlink()


def write_json_atomic(path, obj) -> pathlib.Path:
  p = pathlib.Path(path)
  with atomic_files(p) as (tmp,):
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
  return p


class Failures:
  """A batch's failed items: `add(item, reason)`; `write(dir)` -> failures.json [{"item", "reason"}].

  strict=True: the first failure is fatal (InputError naming the item), after writing failures.json.
  """

  def __init__(self, out_dir=None, *, strict: bool = False, log: Callable[[str], None] | None = None):
    self.out_dir = None if out_dir is None else pathlib.Path(out_dir)
    self.strict = strict
    self.items: list[dict] = []
    self.log = log

  def add(self, item: str, reason, **extra) -> None:
    reason_in = reason
    reason = reason if isinstance(reason, str) else one_line(reason)
    reason = reason.removeprefix(f"{item}: ")   # the item is named once, in "item"
    self.items.append({"item": str(item), "reason": reason, **extra})
    if self.log is not None:
      self.log(f"FAILED {item}: {reason}")
    if self.strict:   # the first failure is fatal: the original error where there is one
      self.write()
      if isinstance(reason_in, Exception) and str(item) in str(reason_in):
        raise reason_in
      raise InputError(f"{item}: {reason} (--strict: stopped at the first failure)")

  def __len__(self):
    return len(self.items)

  def __contains__(self, item):
    return any(f["item"] == str(item) for f in self.items)

  def write(self, out_dir=None) -> Optional[pathlib.Path]:
    d = pathlib.Path(out_dir) if out_dir is not None else self.out_dir
    if d is None:
      return None
    return write_json_atomic(d / "failures.json", self.items)

  def summary(self, done: int, total: int, verb: str = "done") -> str:
    where = f" (reasons in {self.out_dir / 'failures.json'})" if self.items and self.out_dir else ""
    return f"{verb} {done} of {total} items, {len(self.items)} failed{where}"
