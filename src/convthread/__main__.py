"""``python -m convthread``: the command line."""

from convthread.cli import main

raise SystemExit(main())
