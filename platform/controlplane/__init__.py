"""The Django project of the control plane (settings, urls, Celery app, apps)."""
