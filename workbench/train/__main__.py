"""``python -m workbench.train``: one rank of an offline fine-tune (started by torchrun)."""

from __future__ import annotations

import sys

from workbench.train.worker import main

sys.exit(main())
