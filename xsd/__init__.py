"""komut's own XML schemas for the e-health message namespaces it handles.

``catalog.toml`` maps each namespace to its entry-point ``.xsd`` file in this folder.
"""

import pathlib

DIR = pathlib.Path(__file__).parent
