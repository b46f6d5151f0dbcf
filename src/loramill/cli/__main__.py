"""``python -m loramill.cli``."""

from loramill.cli import main

raise SystemExit(main())
