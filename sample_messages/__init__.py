"""komut's sample messages: fictional valid and invalid e-health messages with expected outcomes.

The folder ships as package data. ``DIR / "manifest.toml"`` lists every file with the result the
validator must give (see README.md).
"""

import pathlib

DIR = pathlib.Path(__file__).parent
