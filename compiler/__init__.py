"""podnet: compile a cluster topology into per-node CNI artifacts."""

from pathlib import Path

__version__ = "0.1.0"

# templates/ and schemas/ sit beside the package in the source tree (design card layout).
ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = ROOT / "templates"
SCHEMA_PATH = ROOT / "schemas" / "topology.schema.json"
