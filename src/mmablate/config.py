"""Reading the pipeline's config files: `load(files)` merges YAML overlays in order.

The merge is the one Snakemake applies to `configfile:` + `--configfile` overlays (nested
mappings merge key by key; any other value replaces the earlier one), so `check-config`,
`plan check` and the tests see the config a `snakemake` run sees. Light imports only (yaml).
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def merge(base: dict, over: dict) -> dict:
    """Merges `over` into `base` in place (nested dicts key by key) and returns `base`."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def read(path) -> dict:
    """One config file as a mapping; a missing file or bad YAML is a ConfigError naming it."""
    import yaml

    p = Path(path)
    try:
        data = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping, got {type(data).__name__}")
    return data


def load(files) -> dict:
    """The merged config of `files` (the first is the base, each later one an overlay)."""
    cfg: dict = {}
    for f in files:
        merge(cfg, read(f))
    return cfg


def origins(files, path) -> list[str]:
    """The files among `files` that set the value at `path` (a list of keys / indices), or the
    deepest existing part of it — to say which overlay an error comes from."""
    out = []
    for f in files:
        try:
            cur = read(f)
        except ConfigError:
            continue
        found = True
        for k in path:
            if isinstance(cur, dict) and k in cur:
                cur = cur[k]
            elif isinstance(cur, list) and isinstance(k, int) and k < len(cur):
                cur = cur[k]
            else:
                found = False
                break
        if found:
            out.append(str(f))
    return out
