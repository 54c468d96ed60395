import sys

from zsharm.commands.cli import main

sys.exit(main())
