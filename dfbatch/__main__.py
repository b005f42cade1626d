from dfbatch.cli import main

raise SystemExit(main())
