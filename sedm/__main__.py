"""``python -m sedm``: the CLI through a given interpreter (the workflow's rules use the one running
Snakemake, so an environment need not be activated for its `sedm` to be found)."""

import sys

from sedm.cli import main

sys.exit(main())
