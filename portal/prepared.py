"""PostgreSQL's prepared statements (portal/env.py) kept usable across a schema change.

A statement prepared before a migration changed a column's type, or added or dropped a column it returns,
fails from then on with SQLSTATE 0A000 "cached plan must not change result type"
(PostgreSQL's RevalidateCachedQuery, src/backend/utils/cache/plancache.c). psycopg keeps using the statement,
so during a deploy's `migrate` every older web process and worker failed that query on every request until
its connection ended (CONN_MAX_AGE, 60 s). Here, as asyncpg does:

- outside a transaction the connection drops its prepared statements (DEALLOCATE ALL; psycopg forgets its own
  names when it sees that command) and the query runs once more, replanned: the caller never sees the error
  (not for executemany, which may have run rows before it failed: that error stands);
- inside a transaction the error stands (the transaction is aborted already); its rollback drops the prepared
  statements (psycopg deallocates on every rollback), so the next attempt is replanned;
- either way the connection is closed at the end of the request or task, so no other stale statement is
  left on it.
"""

import time

from django.db import NotSupportedError
from django.db.backends.signals import connection_created


def is_stale_plan(error: BaseException) -> bool:
    """Whether a database error is PostgreSQL's "cached plan must not change result type". Decided on the
    SQLSTATE and the server's function name, which are not translated (lc_messages may be German)."""
    cause = error.__cause__ if isinstance(error, NotSupportedError) else error
    diag = getattr(cause, "diag", None)
    return getattr(cause, "sqlstate", None) == "0A000" and getattr(diag, "source_function", None) == "RevalidateCachedQuery"


def replan_after_schema_change(execute, sql, params, many, context):
    """Django execute wrapper (docs: "Database instrumentation"): runs the query; on a stale plan, see the
    module's docstring. Raises what the query raises otherwise."""
    try:
        return execute(sql, params, many, context)
    except NotSupportedError as error:
        if not is_stale_plan(error):
            raise
        connection = context["connection"]
        connection.close_at = time.monotonic()  # closed at the next request or task boundary
        if connection.in_atomic_block or not connection.get_autocommit():
            raise
        connection.connection.execute("DEALLOCATE ALL", prepare=False)
        if many:
            raise  # executemany may have run some rows before the stale one: never run them twice
        # PostgreSQL checks the plan before executing anything: the failed statement did not run.
        return execute(sql, params, many, context)


def install(sender, connection, **kwargs) -> None:
    """connection_created receiver: adds the wrapper to every new PostgreSQL connection, once."""
    if connection.vendor == "postgresql" and replan_after_schema_change not in connection.execute_wrappers:
        connection.execute_wrappers.append(replan_after_schema_change)


def connect() -> None:
    """Called from PortalConfig.ready()."""
    connection_created.connect(install, dispatch_uid="portal.prepared.install")
