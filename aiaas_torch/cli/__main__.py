"""`python -m aiaas_torch.cli`: the `aiaas` command (also how `train --distributed` relaunches itself under torchrun)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
