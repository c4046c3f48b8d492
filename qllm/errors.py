"""A user's mistake, and how a command reports one: one line on stderr, exit status 2.

`UserError` marks a mistake in what was asked for (a config value, a trace, a model the engine
cannot run); Hydra's and OmegaConf's config errors count as such too. Anything else is a bug and
keeps its traceback, and `HYDRA_FULL_ERROR=1` shows the traceback of a user's mistake as well.

A Hydra app reports mistakes at two depths: those in composing the config reach the console
script's entry point (`report_user_errors`), those in running the job are caught inside it
(`user_errors_reported`), before Hydra would print its own lines about the failed job.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

CONFIG_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException, OmegaConfBaseException)
USAGE_ERROR = 2  # the exit status of a command used wrongly, as argparse exits
ONE_LINE = "QLLM_ONE_LINE_ERRORS"  # set by an entry point for the job it runs: report mistakes in one line


class UserError(Exception):
    """A mistake in the user's input: its message says which file, row, field or option, and what was expected."""


class ConfigurationError(UserError, ValueError):
    """A choice the engine cannot run: an unsupported model, an incompatible pair of options."""


def report_user_errors(main: Callable[[], None], prog: str) -> None:
    """Run `main` (a Hydra app's entry point) so that a user's mistake ends in one line and exit status 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for tracebacks
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises a composition error instead of printing it
    os.environ[ONE_LINE] = prog
    with user_errors_reported(prog):
        main()


@contextlib.contextmanager
def user_errors_reported(prog: str) -> Iterator[None]:
    """Inside a job started by `report_user_errors`: a user's mistake exits with one line."""
    try:
        yield
    except Exception as error:
        mistake = user_mistake(error)
        if mistake is None or os.environ.get(ONE_LINE) != prog:
            raise
        exit_with_usage_error(prog, str(mistake))


def user_mistake(error: BaseException | None) -> BaseException | None:
    """`error` or the user's mistake it wraps (Hydra wraps errors raised while instantiating), if any."""
    while error is not None:
        if isinstance(error, (UserError, *CONFIG_ERRORS)):
            return error
        error = error.__cause__
    return None


def exit_with_usage_error(prog: str, message: str) -> NoReturn:
    """`prog: error: message` on one line of stderr, exit status 2."""
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    sys.exit(USAGE_ERROR)
