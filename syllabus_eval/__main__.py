"""``python -m syllabus_eval``: the same as the ``syllabus-eval`` command."""

import sys

from syllabus_eval.cli import main

sys.exit(main())
