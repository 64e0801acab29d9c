"""What every command line shares: flag parsing, quiet library logs, and one-line errors instead of tracebacks.

Each `python -m jepa_jax.<command>` ends with `cli.run(main)` in place of `app.run(main)`. Then:
  - a bad flag, an unloadable config file, a config override naming no field, or a config value that cannot work
    prints one line `config error: <message>` on stderr and exits 2;
  - a missing or damaged input (checkpoint path, a checkpoint folder with no readable step, list file, a file
    holding another model size, a workdir another run holds) prints one line `error: <message>` and exits 2:
    nothing was started;
  - a fault during the run (disk full or quota, non-finite loss) prints one line `error: <message>` and exits 1;
    what was kept is in the message;
  - the INFO lines of orbax, grain, jax, etils and absl are hidden (their warnings stay, one line each);
    `--verbosity=1` shows everything, tracebacks included.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import logging as logging_std
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

EXIT_REFUSED = 2  # the command could not start as given: fix the config, flag or input file it names
EXIT_FAULT = 1  # the run started and stopped on a fault; the message says what was kept

# (module, exception class, label, exit code), looked up lazily so that this module imports nothing heavy: a class
# whose module was never imported cannot have been raised.
_KNOWN_ERRORS = (
    ("jepa_jax.config_validation", "ConfigError", "config error", EXIT_REFUSED),
    ("jepa_jax.evaluation.eval_config", "EvalConfigError", "config error", EXIT_REFUSED),
    ("jepa_jax.loading", "EncoderSourceError", "error", EXIT_REFUSED),
    ("jepa_jax.run_lock", "WorkdirLockedError", "error", EXIT_REFUSED),
    ("jepa_jax.import_torch", "CheckpointFormatError", "error", EXIT_REFUSED),
    ("jepa_jax.warm_start", "InitFromError", "config error", EXIT_REFUSED),
    ("input_pipeline.sources", "FileListError", "error", EXIT_REFUSED),
    ("jepa_jax.checkpointing", "NoReadableCheckpointError", "error", EXIT_REFUSED),
    ("jepa_jax.checkpointing", "DiskFullError", "error", EXIT_FAULT),
    ("jepa_jax.train", "NonFiniteLossError", "error", EXIT_FAULT),
    ("input_pipeline.pipeline", "DataPipelineError", "error", EXIT_FAULT),
)
# Missing or unreadable paths given on the command line or in the config.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

# Libraries whose INFO lines drown our own (orbax prints a dozen per checkpoint); their warnings still show.
# asyncio: orbax's event loop logs a failed write again ("Future exception was never retrieved") when it is collected.
_LIBRARY_PATHS = ("/orbax/", "/grain/", "/jax/_src/", "/jax/experimental/", "/etils/", "/absl/", "/asyncio/")
# Our own one-line report covers these; the libraries' copies (with tracebacks, from background threads) go.
_REPORTED_BY_US = ("No space left on device", "Disk quota exceeded")
# Warnings that say nothing to act on: orbax warns on every read-only manager (export, pictures, evaluation).
_HARMLESS = ("Given directory is read only",)


def verbose() -> bool:
  """--verbosity >= 1: library INFO lines and tracebacks are shown."""
  return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1


class QuietLibraries(logging_std.Filter):
  """Hides the libraries' INFO lines and tracebacks; keeps their warnings and errors as one line each."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if not any(p in record.pathname for p in _LIBRARY_PATHS):
      return True
    if record.levelno < logging_std.WARNING:
      return False
    message = record.getMessage()
    if any(s in message for s in _REPORTED_BY_US + _HARMLESS):
      return False
    checkpointing = sys.modules.get("jepa_jax.checkpointing")
    if record.exc_info and checkpointing and checkpointing.is_out_of_space(record.exc_info[1]):
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook that drops 'Event loop is closed' and passes everything else to Python's own hook.

  When a checkpoint write fails (a full disk), orbax closes its event loop while tensorstore still holds the other
  writes of that save; as they finish, their callbacks try to wake the closed loop and Python prints one traceback
  per write, before our one-line report of the same fault (how many depends on timing).
  """
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
    return
  sys.__unraisablehook__(unraisable)


def configure_logging() -> None:
  """INFO for our own modules; the libraries quiet unless --verbosity >= 1."""
  if verbose():
    return
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
  sys.unraisablehook = quiet_unraisable


def one_line(text: str) -> str:
  """A message on one line; an embedded traceback (config files that raise) is reduced to its last line."""
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    return lines[-1]
  return " ".join(lines)


def fail(label: str, message: str, code: int) -> None:
  """Prints `label: message` on stderr and exits with `code`."""
  sys.stdout.flush()
  print(f"{label}: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(code)


def _loaded_as(module: str) -> list:
  """The module object(s) of `module`: `python -m jepa_jax.import_torch` runs it as __main__, whose classes
  are not those of a later `import jepa_jax.import_torch`."""
  found = [m for m in (sys.modules.get(module),) if m is not None]
  main = sys.modules.get("__main__")
  if getattr(getattr(main, "__spec__", None), "name", None) == module:
    found.append(main)
  return found


def classify(error: BaseException):
  """(label, exit code) for an error the user can act on, or None for a bug (which keeps its traceback)."""
  for module, name, label, code in _KNOWN_ERRORS:
    for loaded in _loaded_as(module):
      cls = getattr(loaded, name, None)
      if cls is not None and isinstance(error, cls):
        return label, code
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):  # logs, pictures, data
    return "error", EXIT_FAULT
  if isinstance(error, _PATH_ERRORS):
    return "error", EXIT_REFUSED
  return None


def _config_flag_names():
  """Flags holding a config file (config_files.DEFINE_config wraps ml_collections' parser)."""
  from ml_collections.config_flags.config_flags import ConfigFileFlagParser
  is_config = lambda p: isinstance(p, ConfigFileFlagParser) or isinstance(getattr(p, "_file_parser", None),
                                                                         ConfigFileFlagParser)
  return [name for name in flags.FLAGS if is_config(flags.FLAGS[name].parser)]


def parse_flags(argv):
  """absl's parsing, with a config file or override that cannot be used reported as one `config error` line."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail("config error", str(e), EXIT_REFUSED)
  except (AttributeError, KeyError) as e:  # ml_collections: an override naming a field the config lacks
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    fail("config error", f"the config has no field {e}; check the overrides {overrides}", EXIT_REFUSED)
  except (TypeError, ValueError) as e:  # raised inside a config file's get_config()
    fail("config error", f"the config file raised: {e}", EXIT_REFUSED)
  except SyntaxError as e:
    fail("config error", f"the config file {e.filename} does not parse: {e.msg} (line {e.lineno})", EXIT_REFUSED)
  for name in _config_flag_names():
    value = flags.FLAGS[name].value
    try:
      getattr(value, "lock", None)  # a config file that failed to load raises on any attribute access
    except OSError as e:
      cause = str(e.__cause__ or e).strip().splitlines()[-1].strip()  # the attempt's own error, last
      fail("config error", f"--{name}: cannot load the config file: {cause}", EXIT_REFUSED)
  return remaining


def run(main: Callable) -> None:
  """app.run(main) with parse_flags, configure_logging and one-line errors (see the module docstring)."""

  def wrapped(argv):
    configure_logging()
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      known = classify(e)
      if known is None or verbose():
        raise
      fail(known[0], str(e), known[1])

  app.run(wrapped, flags_parser=parse_flags)
