"""Print pip constraints that pin each runtime dependency in setup.cfg to its lowest allowed
version: ``install_requires`` and the extras a user installs (not ``test``, ``bench``, ``docs``
or ``lock``, which are the toolchain). ``bash scripts/test.sh --oldest`` installs with them.

Every runtime requirement must have a lower bound (``>=``): one without is an error here.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

TOOLCHAIN_EXTRAS = {"test", "bench", "docs", "lock"}
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*(?P<low>[0-9][0-9A-Za-z.]*)"
                         r"\s*(,.*)?$")


def lowest(setup_cfg: Path) -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = cfg["options"]["install_requires"].splitlines()
    for extra, value in cfg["options.extras_require"].items():
        if extra not in TOOLCHAIN_EXTRAS:
            lines += value.splitlines()
    found: dict[str, str] = {}
    for line in filter(None, (raw.strip() for raw in lines)):
        match = REQUIREMENT.match(line)
        if match is None:
            raise SystemExit(f"setup.cfg: runtime requirement {line!r} has no lower bound (>=)")
        name, low = match["name"].lower(), match["low"]
        if found.setdefault(name, low) != low:
            raise SystemExit(f"setup.cfg: {name} has two lower bounds, {found[name]} and {low}")
    return found


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("setup.cfg")
    for name, low in sorted(lowest(path).items()):
        print(f"{name}=={low}")


if __name__ == "__main__":
    main()
