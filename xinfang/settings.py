"""Settings in one place: every path and tunable the project reads from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA_DIR = REPO_ROOT / "datasets" / "demo"
PROVINCE_DUTY_LIST = REPO_ROOT / "datasets" / "duty_lists" / "province_24.yaml"
CHANNEL_TABLE = REPO_ROOT / "datasets" / "channels.yaml"
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "tipdm2020_c_gov_messages"


def default_data_dir() -> Path:
    """Where converted encoders, models, the store and the index live (XINFANG_DATA_DIR)."""
    env = os.environ.get("XINFANG_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "var"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)

    @property
    def encoders_dir(self) -> Path:
        return self.data_dir / "encoders"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def get_settings() -> Settings:
    return Settings()
