"""Config profiles: a serve config plus overrides (e.g. profiles/gpu.yaml), merged as data.

Mappings merge key by key; lists of named items (``applications``, ``deployments``) merge item
by item on ``name``; anything else is replaced. ``stylefleet.spec`` checks the result like any serve config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list) and _named(base) and _named(override):
        by_name = {item["name"]: item for item in base}
        items = [merge(item, next((o for o in override if o["name"] == item["name"]), {})) for item in base]
        items += [copy.deepcopy(o) for o in override if o["name"] not in by_name]
        return items
    return copy.deepcopy(override)


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def apply_profile(config: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """``profile['applications']`` is keyed by application name (easier to write than a list)."""
    profile = dict(profile)
    apps = profile.pop("applications", {}) or {}
    unknown = set(apps) - {a["name"] for a in config.get("applications", [])}
    if unknown:
        raise ValueError(f"profile names applications not in the config: {sorted(unknown)}")
    merged = merge(config, profile)
    merged["applications"] = [merge(app, apps.get(app["name"], {})) for app in merged["applications"]]
    return merged


def load(config_path: str | Path, profile_path: str | Path | None = None) -> dict[str, Any]:
    """The serve config merged with the profile, as data; ``stylefleet.spec.load_serve_file``
    checks it (every reader goes through that)."""
    config = yaml.safe_load(Path(config_path).read_text())
    if profile_path:
        config = apply_profile(config, yaml.safe_load(Path(profile_path).read_text()))
    return config

