"""The HTTP API: ``create_api`` builds the FastAPI app (``application``) from one router per area:
``styles`` (the catalogue, previews, applying a style, shadow drift), ``jobs`` (batch jobs),
``health`` (probes), ``errors`` (the renderer and the table of codes), ``web`` (the page and its
files); ``forms`` reads request bodies, ``limits`` bounds them.

Import the modules themselves (``stylefleet.router.api.application.create_api``): this package's
``__init__`` imports none of them, or every module here would import itself through it (a cycle
tests/unit/test_imports.py fails on)."""
