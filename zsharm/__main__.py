import sys

from zsharm.cli import main

sys.exit(main())
