"""The wire contract's models as the SDK hands them to the app: no pydantic needed.

``MigrationClient.status()`` returns a :class:`GetMigrationStatusResponse`, ``summary()`` a
:class:`GetMigrationSummaryResponse`, and so on: frozen dataclasses with the snake_case
fields, types and defaults of the pydantic models in :mod:`sdk.contract` (the definition
the server validates with; importing it needs pydantic, which a phone cannot install).
Annotate an app's code with these; ``wire()`` gives the camelCase JSON form::

    >>> from sdk.wire import Limits
    >>> Limits().max_batch_items
    5000
    >>> Limits().wire()["maxBatchItems"]
    5000
"""

from ._wire.models import *  # noqa: F403  (the generated models, each under its own name)
from ._wire.models import __all__ as __all__
