"""`python -m dgft train|eval|export ...`: the `dgft` command where the package is on PYTHONPATH, not installed."""

from dgft.cli import main

main()
