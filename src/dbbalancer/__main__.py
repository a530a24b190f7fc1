from dbbalancer.cli import main

raise SystemExit(main())
