"""``python -m dcm_sync``: the admin command line (`dcm_sync.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
