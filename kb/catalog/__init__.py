"""The catalog: collections, documents, pages, jobs and the serving model version in SQLite or
PostgreSQL.

`db` builds engines and sessions and runs the Alembic migrations, `models` holds the tables,
`repo` the queries the API and the workers call.
"""

from kb.catalog.db import (
    current_revision,
    head_revision,
    make_engine,
    normalize_url,
    session_factory,
    upgrade,
)
from kb.catalog.models import (
    Base,
    Collection,
    Document,
    DocumentStatus,
    Job,
    JobKind,
    JobPage,
    JobStatus,
    Page,
    Serving,
)

__all__ = [
    "Base",
    "Collection",
    "Document",
    "DocumentStatus",
    "Job",
    "JobKind",
    "JobPage",
    "JobStatus",
    "Page",
    "Serving",
    "current_revision",
    "head_revision",
    "make_engine",
    "normalize_url",
    "session_factory",
    "upgrade",
]
