"""The read-only web console: one static page over a small JSON API (``console.api``)."""
