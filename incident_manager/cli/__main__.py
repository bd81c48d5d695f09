"""`python -m incident_manager.cli`: the same as the `imctl` console script."""

from incident_manager.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
