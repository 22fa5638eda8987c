import sys

from iggy.admin.cli import main

sys.exit(main())
