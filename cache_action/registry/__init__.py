"""The registry's HTTP face (aiohttp) over a storage root."""

from pathlib import Path

# Where the standalone service and the image's health check expect the ready file.
READY_FILE = Path("/run/cache-action/ready.json")
