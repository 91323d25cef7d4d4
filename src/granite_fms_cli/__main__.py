"""`python -m granite_fms_cli ...` is `granite-fms ...` (e.g. under `torchrun`)."""

import sys

from granite_fms_cli import main

sys.exit(main())
