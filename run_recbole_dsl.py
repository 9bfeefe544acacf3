"""Train any RecBole model with Dynamic Sparse Learning.

    python run_recbole_dsl.py --model=LightGCN --dataset=ml-100k --sparsity=0.9

Every RecBole setting and DSL property can be given as ``--key=value`` or ``--key value``. With
``--sweep=FILE --sweep_dir=DIR`` it runs a hyperparameter sweep with Ray Tune instead
(see ``recbole_dsl.tools.sweep``); the exit status is then 1 when no trial finished or the
sweep was interrupted.
"""

import argparse
import sys
import warnings
from typing import List, Optional

from recbole_dsl.errors import DSLConfigError, DSLError, DSLInterrupted, DSLSweepError
from recbole_dsl.quick_start import run_recbole_dsl


SHORT_OPTIONS = {"-m": "--model", "-d": "--dataset"}


def normalize_arguments(argv: List[str]) -> List[str]:
    """``--key value`` and ``-m BPR`` as the ``--key=value`` that RecBole reads from
    ``sys.argv``; anything else it would silently ignore is refused."""
    arguments, i = [], 0
    while i < len(argv):
        arg = SHORT_OPTIONS.get(argv[i], argv[i])
        if arg.startswith("--") and "=" not in arg and arg not in ("--help",):
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                raise DSLConfigError(f"{arg} has no value: give it as {arg}=VALUE")
            arg, i = f"{arg}={argv[i + 1]}", i + 1
        if arg in ("-h", "--help"):
            arguments.append(arg)
        elif arg.startswith("--") and arg[2:].count("=") > 1:
            raise DSLConfigError(
                f"cannot read the argument {arg!r}: RecBole splits every argument at '=', so a value cannot hold "
                "one (put the setting in a YAML file given with --config_files)"
            )
        elif not arg.startswith("--") or not arg[2:].split("=")[0]:
            raise DSLConfigError(f"cannot read the argument {arg!r}: give settings as --key=value")
        else:
            arguments.append(arg)
        i += 1
    return arguments


def main() -> int:
    try:
        # RecBole's Config reads the settings from sys.argv itself.
        sys.argv[1:] = normalize_arguments(sys.argv[1:])
    except DSLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="BPR", help="name of a RecBole model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of a dataset")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    parser.add_argument("--sweep", type=str, default=None, help="sweep file: run a Ray Tune sweep")
    parser.add_argument("--sweep_dir", type=str, default=None, help="folder of the sweep's results; resumes the sweep in it")
    parser.add_argument("--ray_address", type=str, default=None, help="Ray cluster to run the sweep on, e.g. auto")
    args, _ = parser.parse_known_args()
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        if args.sweep or args.sweep_dir or args.ray_address:
            return _sweep(args, config_file_list)
        run_recbole_dsl(model=args.model, dataset=args.dataset, config_file_list=config_file_list)
    except DSLInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except DSLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _sweep(args: argparse.Namespace, config_file_list: Optional[List[str]]) -> int:
    if not args.sweep or not args.sweep_dir:
        raise DSLSweepError("a sweep needs both --sweep=FILE and --sweep_dir=DIR")
    with warnings.catch_warnings():
        # Ray 2.6.3 imports pkg_resources, whose deprecation warning means nothing to a user.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from recbole_dsl.tools.sweep import run_sweep  # imports Ray, which single runs do not need

    outcome = run_sweep(args.model, args.dataset, args.sweep, args.sweep_dir, config_file_list, args.ray_address)
    return 0 if outcome.complete and outcome.best_config_file else 1


if __name__ == "__main__":
    sys.exit(main())
