"""`python -m train --config train/configs/<name>.yaml [key=value ...]`

Trains the model of train/model.py on the task the config names and prints the final evaluation.
Any config key can be overridden on the command line (values are parsed as YAML):

    python -m train --config train/configs/mqar.yaml mixer=based out_dir=runs/mqar-based
    python -m train --config train/configs/mqar.yaml out_dir=runs/mqar-based resume=true
    torchrun --nproc_per_node=2 -m train --config train/configs/text-tiny.yaml

Keys and defaults: train/config.py. Under torchrun every process runs this; rank 0 logs.
"""

import argparse
import json
import sys

import torch.distributed as dist

from .config import load
from .trainer import run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML file of config keys (train/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config keys to override")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
        result = run(cfg)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        summary = {k: result[k] for k in ("steps_done", "eval", "tokens_per_s", "seconds", "state_sizes", "params")}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
