"""The ``recfunnel`` console script. Each subcommand is a plain function in the package; this
package only parses arguments (``data``, ``train``, ``funnel``: their subcommands; ``bench``'s live
in :mod:`recfunnel.bench.cli`), calls it, and turns a user mistake into one line on stderr and an
exit code.

Each ``_cmd_*`` imports its subcommand's module when it runs: torch, TorchRec, MLflow and Spark
take seconds to import, and ``recfunnel --help`` or ``recfunnel prepare`` should not wait for them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from recfunnel.bench.cli import add_bench_parsers
from recfunnel.cli.data import PREPARE_SOURCES, add_data_parsers
from recfunnel.cli.funnel import add_funnel_parsers
from recfunnel.cli.train import add_train_parsers
from recfunnel.compat.tqdm import close_progress_bars
from recfunnel.errors import RecfunnelError, Terminated

__all__ = ["main", "run", "build_parser", "PREPARE_SOURCES"]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``argv``, only the source that ``argv`` names is imported."""
    parser = argparse.ArgumentParser(
        prog="recfunnel",
        description="Deep-learning recommenders as a funnel: prepare data, train, index, recommend, serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_data_parsers(sub, argv)
    add_train_parsers(sub)
    add_funnel_parsers(sub)

    add_bench_parsers(sub)
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; user mistakes raise :class:`RecfunnelError`."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    args.argv = list(argv)  # for launchers that re-run the command
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


# TorchRec and fbgemm are installed by hand, not by pip's resolver (see pyproject.toml)
TORCH_TRIO = ("torchrec", "fbgemm_gpu")
INSTALL_TRIO = (
    "install the torch trio first: pip install torch==2.13.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 "
    "torchmetrics==1.0.3 pyre-extensions, then pip install --no-deps torchrec==1.8.0 (on GPUs: fbgemm-gpu==1.8.0 "
    "instead of fbgemm-gpu-cpu)"
)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit codes: 0 done, 2 a user mistake (one line on stderr), 3 corrupt data
    (one line naming the shard and block), 130 interrupted (SIGINT), 143 terminated (SIGTERM)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return run(argv)
    except RecfunnelError as err:
        close_progress_bars()
        print(f"recfunnel: error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        if err.name not in TORCH_TRIO:
            raise
        print(f"recfunnel: error: {err.name} is not installed; {INSTALL_TRIO}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder the system will not let us read or write
        if "fbgemm_gpu" in str(err):  # the CUDA build of fbgemm-gpu on a machine without CUDA
            print(
                f"recfunnel: error: fbgemm-gpu cannot load here ({str(err).splitlines()[0][:120]}); {INSTALL_TRIO}",
                file=sys.stderr,
            )
            return 2
        close_progress_bars()
        where = f"{err.filename}: " if err.filename else ""
        print(f"recfunnel: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except Terminated:
        close_progress_bars()
        print("recfunnel: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        close_progress_bars()
        print("recfunnel: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
