"""`python -m cpt_core.cli`: the `cpt` command without its console script (tests, images without PATH)."""

from cpt_core.cli import main

main()
