"""`python -m exprl.train --config F [key=value ...]`, which `deepspeed --num_gpus N -m exprl.train` runs."""

import sys

from exprl.errors import run_command
from exprl.train.cli import main
from exprl.train.engine import close_distributed

try:
    code = run_command("exprl train", main, sys.argv[1:])
finally:
    close_distributed()
sys.exit(code)
