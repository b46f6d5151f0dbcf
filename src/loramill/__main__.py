"""``python -m loramill``."""

from loramill.cli import main

raise SystemExit(main())
