"""The web console: the services, their endpoints, revisions and instances, and the model registry as pages.

Rendered on the server from the store and the registry (``views.py`` gathers, ``pages.py`` routes and renders
Jinja2 templates with every value escaped; ``writes.py`` guards and runs the forms); one small script of its own keeps
the counts live, and nothing is fetched from elsewhere, so a page works offline and behind a path prefix. Served by
``ferry serve`` under ``/console/`` and by ``ferry console`` alone, with the serve tokens' access.
"""
