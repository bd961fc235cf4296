"""`python -m exprl.train --config F [key=value ...]`, which `deepspeed --num_gpus N -m exprl.train` runs."""

import sys

from exprl.train.cli import main

sys.exit(main())
