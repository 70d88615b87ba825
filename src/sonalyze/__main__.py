from sonalyze.cli import main

raise SystemExit(main())
