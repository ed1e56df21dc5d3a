"""``stack.yml``: the whole schema (pydantic), its loading, and errors that name file:line.

One module per part of the file; every other package of the engine reads its settings
from here, and this package imports nothing of theirs::

    loader.py         load_config: read, validate in one pass, raise every problem found
    model.py          the file itself (StackConfig, regions, dbt, publish), {{ template }}
                      rendering
    locate.py         the line of a key path; keys written twice
    explain.py        pydantic's errors as file:line, key and a fix
    validate.py       what connects the sections: names referred to, each source's
                      config against its connector, the dbt project
    references.py     the ``${kind:...}`` secret reference syntax
    targets.py        targets:      DuckDB on DuckLake, Snowflake
    sources.py        sources:      connector, config, streams (sync mode, keys, deletes,
                                    schema policy, bad records)
    checks.py         checks:       freshness, volume, schema, values, reconcile
    bi.py             bi:           one hook model per BI tool
    lineage.py        lineage:      where OpenLineage events and the page go
    orchestration.py  deployments:, alerts:, backfill:
    secrets.py        secrets:      Vault's address and login
    durations.py      ``90s``, ``10m``, ``26h`` wherever a duration is taken

The file, its targets and its sources are re-exported here; a section's models are
imported from its module (``stack.config.checks.Check``).
"""

from stack.config.loader import CONFIG_ENV, config_path, load_config
from stack.config.model import (
    DEFAULT_CONFIG,
    DEFAULT_REGION,
    DbtConfig,
    PublishConfig,
    RegionConfig,
    StackConfig,
    render,
)
from stack.config.sources import (
    BadRecordPolicy,
    DeleteMode,
    SchemaPolicy,
    SourceConfig,
    StreamConfig,
)
from stack.config.targets import TARGET_TYPES, DuckDBTarget, SnowflakeTarget, Target

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "DEFAULT_REGION",
    "TARGET_TYPES",
    "BadRecordPolicy",
    "DbtConfig",
    "DeleteMode",
    "DuckDBTarget",
    "PublishConfig",
    "RegionConfig",
    "SchemaPolicy",
    "SnowflakeTarget",
    "SourceConfig",
    "StackConfig",
    "StreamConfig",
    "Target",
    "config_path",
    "load_config",
    "render",
]
