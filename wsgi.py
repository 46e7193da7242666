"""Entry point for gunicorn (wsgi:app), celery (wsgi:celery_app) and flask --app wsgi."""

from app import create_app

app = create_app()
celery_app = app.extensions["celery"]
