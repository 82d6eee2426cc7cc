"""``python -m regtask_runners <task_type>``: the command of every runner Job."""

from __future__ import annotations

import sys

from regtask_runners.framework import main

if __name__ == "__main__":
    sys.exit(main())
