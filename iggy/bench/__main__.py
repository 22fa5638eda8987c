from iggy.bench.cli import main

raise SystemExit(main())
