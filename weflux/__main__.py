from weflux.cli import main

raise SystemExit(main())
