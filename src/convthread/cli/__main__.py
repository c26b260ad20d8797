"""``python -m convthread.cli``: the command line."""

from convthread.cli import main

raise SystemExit(main())
