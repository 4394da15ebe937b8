"""Make the working tree importable as ``ansible_collections.csa_inabox.managed_identity`` and the lab as ``azurelab``."""
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / ".venv" / "collections"
LINK = COLLECTIONS / "ansible_collections" / "csa_inabox" / "managed_identity"
if not LINK.exists():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    LINK.symlink_to(REPO)
for path in (str(COLLECTIONS), str(REPO / "lab")):
    if path not in sys.path:
        sys.path.insert(0, path)
