"""The web console: the services, their endpoints, revisions and instances, and the model registry as pages.

Rendered on the server from the store and the registry (``views.py`` gathers, ``pages.py`` routes and renders
Jinja2 templates with every value escaped); no script and nothing fetched from elsewhere, so a page works offline
and behind a path prefix. Served by ``ferry serve`` under ``/console/``, with the serve tokens' access.
"""
