"""``python -m softprompt`` runs the CLI."""

import sys

from softprompt.cli import main

sys.exit(main())
