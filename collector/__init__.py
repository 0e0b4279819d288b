"""The city tier's collector: packs off the bus (JetStream or MQTT) into a database, each
reading once. ``urbansense collector run --config collector.toml``; docs/CITY.md."""

from collector.app import Collector
from collector.config import CollectorConfig, CollectorConfigError, SourceConfig, load_config

__all__ = ["Collector", "CollectorConfig", "CollectorConfigError", "SourceConfig", "load_config"]
