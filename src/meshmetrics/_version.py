"""The installed version of meshmetrics, read once from the package metadata."""

from __future__ import annotations

from importlib.metadata import version

VERSION = version("meshmetrics")
