from sfsd.cli import main

raise SystemExit(main())
