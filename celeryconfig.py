"""Celery configuration, read by chronox.celery_app via config_from_object("celeryconfig").

A thin delegate: every value comes from chronox.tasks.config.celery_config over the
environment's settings, so workers, beat, the CLI and test clients agree. Reloading the
module (importlib.reload) reads the environment again.
"""
from chronox.settings import load_settings
from chronox.tasks.config import celery_config

globals().update(celery_config(load_settings()))
