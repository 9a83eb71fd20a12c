"""``python -m deploykit.cli``: the ``deploykit`` command."""

from . import main

main()
