"""`python -m simulator --listen 127.0.0.1:9878 --seed 1 --start 2026-10-01`."""

from simulator.server import main

if __name__ == "__main__":
    raise SystemExit(main())
