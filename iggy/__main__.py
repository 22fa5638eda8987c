import sys

from iggy.cli import main

sys.exit(main())
