"""Train any RecBole model with Dynamic Sparse Learning.

    python run_recbole_dsl.py --model=LightGCN --dataset=ml-100k --sparsity=0.9

Every RecBole setting and DSL property can be given as ``--key=value``.
"""

import argparse
import sys

from recbole_dsl.quick_start import run_recbole_dsl
from recbole_dsl.utils import DSLError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="BPR", help="name of a RecBole model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of a dataset")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    args, _ = parser.parse_known_args()
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        run_recbole_dsl(model=args.model, dataset=args.dataset, config_file_list=config_file_list)
    except DSLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
