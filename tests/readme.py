"""The README's examples, for the tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def readme_snippet(title: str) -> str:
    """The first Python example after the README's heading ``## title`` or ``### title``."""
    text = README.read_text()
    match = re.search(rf"^#+ {re.escape(title)}\n", text, re.M)
    if match is None:
        raise AssertionError(f"README.md has no heading {title!r}")
    return re.search(r"```python\n(.*?)```", text[match.end():], re.S).group(1)
