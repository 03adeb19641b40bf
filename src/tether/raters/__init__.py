"""The rater web app: human preference collection on SQLite or PostgreSQL (`tether raters ...`).

Layers, each usable without the one above it:

    db.py        SQLAlchemy models, engine factory, Alembic migrations (shipped in migrations/)
    security.py  password hashing (bounded by a gate), token hashing, the per-install secret key
    accounts.py  users, invites, sessions, login throttling, deactivation
    intake.py    what text may enter (imports, API bodies) and be rendered
    ratings.py   the per-rating write path: votes, undo, progress
    service.py   the queue and assignment, guidelines; exports.py the exports; review.py the admin's review tools
    stats.py     the dashboard figures, agreement from `tether.math.agreement`
    dependencies.py  what every route reads from a request: app context, signed-in user, CSRF, page rendering
    middleware.py    security headers and the body limit, outside the whole app
    web.py       the FastAPI app and sign-in pages; rater_pages.py, admin_pages.py, review_pages.py the pages;
                 api.py and admin_api.py the JSON API under /api/
    cli.py       `tether raters init | add-rater | deactivate | reactivate | guidelines | import | export | serve`

Never imports torch, the training stages or the tiny world: a test checks `sys.modules`.
"""
