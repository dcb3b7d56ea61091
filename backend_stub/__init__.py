"""The reference migration server: the wire contract of ``sdk.contract``, served by FastAPI.

Build an app from settings (nothing happens at import time), or run
``python -m backend_stub``::

    >>> settings = Settings()                  # in memory, development JWT secret
    >>> app = create_app(settings)             # serve it with any ASGI server
    >>> token = issue_token("alice", settings.jwt_secret)
    >>> verify_token(token, settings.jwt_secret)
    'alice'
    >>> app.state.storage.close()

Storage is SQLite in ``settings.data_dir`` (in memory when it is ``None``), behind the
:class:`Storage` protocol. Tokens are development HS256 tokens unless
``Settings(identity=IdentitySettings(...))`` names an identity provider's JWKS.
"""

import logging

from backend_stub.app import create_app, open_storage
from backend_stub.auth import issue_token, verify_token
from backend_stub.events import Event, EventType, UserRegistered, handle_user_registered
from backend_stub.items import seed_cloud_items
from backend_stub.settings import DEV_JWT_SECRET, IdentitySettings, Settings
from backend_stub.storage import Storage
from backend_stub.storage.sqlite import SQLiteStorage

__all__ = [
    "DEV_JWT_SECRET",
    "Event",
    "EventType",
    "IdentitySettings",
    "SQLiteStorage",
    "Settings",
    "Storage",
    "UserRegistered",
    "create_app",
    "handle_user_registered",
    "issue_token",
    "open_storage",
    "seed_cloud_items",
    "verify_token",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
