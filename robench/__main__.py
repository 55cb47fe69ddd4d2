"""``python -m robench`` is the same as the ``robench`` console script."""
from robench.cli.main import main

raise SystemExit(main())
