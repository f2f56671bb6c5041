"""Config loading for the training side: re-exports `worldmodel.config_io` (the model needs the same typed
dict <-> dataclass conversion to rebuild itself from a saved config.json, and worldmodel must not import training)."""

from worldmodel.config_io import (  # noqa: F401
    ConfigError,
    apply_overrides,
    config_hash,
    from_dict,
    load_yaml,
    merge,
    resolve_config,
    save_json,
    save_yaml,
    to_dict,
)
