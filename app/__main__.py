"""`python -m app`: the soundloom command line."""

from app.cli import main

raise SystemExit(main())
