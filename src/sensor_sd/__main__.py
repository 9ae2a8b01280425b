"""`python -m sensor_sd` is the same as the `sensor-sd` console script."""

from sensor_sd.cli import main

raise SystemExit(main())
