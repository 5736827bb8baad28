"""Where the Hydra config tree lives and how its schemas get registered.

Every entry point calls `register_configs()` before Hydra composes, so each YAML option
is validated against its dataclass in `recsys.config.schema` (a wrong key or type fails
at compose time, before any work starts).
"""

from pathlib import Path

from recsys.config.schema import register_configs

CONF_DIR: str = str(Path(__file__).resolve().parents[2] / "conf")
"""Absolute path of the repository's `conf/` directory (the one place defaults live)."""

__all__ = ["CONF_DIR", "register_configs"]
