"""`python -m llava_interleave.cli` (what torchrun runs): the same as the `llava-interleave` script."""

import sys

from . import main

sys.exit(main())
