import sys

from exprl.cli import main

sys.exit(main())
