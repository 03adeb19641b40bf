"""The rater web app: human preference collection on SQLite or PostgreSQL (`tether raters ...`).

Layers, each usable without the one above it:

    db.py        SQLAlchemy models, engine factory, Alembic migrations (shipped in migrations/)
    security.py  password hashing, token hashing, the per-install secret key
    accounts.py  users, invites, sessions, login rate limiting
    service.py   the queue, assignment, ratings, guidelines and exports (no HTTP)
    stats.py     the dashboard figures, agreement from `tether.math.agreement`
    dependencies.py  what every route reads from a request: app context, signed-in user, CSRF, page rendering
    web.py       the FastAPI app and the rater pages; admin_pages.py the dashboard; api.py the JSON API under /api/
    cli.py       `tether raters init | add-rater | import | export | serve`

Never imports torch, the training stages or the tiny world: a test checks `sys.modules`.
"""
