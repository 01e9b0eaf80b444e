"""File-system helpers: `created_mode` lives in `rewards.files` (the bottom package) and is used from here."""

from __future__ import annotations

from rewards.files import created_mode

__all__ = ["created_mode"]
