import sys

from iggy.server.cli import main

sys.exit(main())
