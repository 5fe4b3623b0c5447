"""The ClickHouse store (chDB or a server), behind one interface: see :mod:`tracer.store.core`."""
from tracer.store.core import (
                               DEFAULT_DATABASE,
                               QUERIES_DIR,
                               Backend,
                               ChdbBackend,
                               ClickHouseBackend,
                               Store,
                               StoreURL,
                               check_identifier,
                               default_store_url,
                               load_sql,
                               open_store,
                               parse_store_url,
                               split_statements,
)

__all__ = ["DEFAULT_DATABASE", "QUERIES_DIR", "Backend", "ChdbBackend", "ClickHouseBackend", "Store", "StoreURL",
           "check_identifier", "default_store_url", "load_sql", "open_store", "parse_store_url", "split_statements"]
