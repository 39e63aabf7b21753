from paintbench.cli import main

raise SystemExit(main())
