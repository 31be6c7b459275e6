"""Meridian's notebook hub: JupyterHub's configuration (:mod:`meridian_hub.config`), the
spawner (:mod:`meridian_hub.spawner`) and the contents manager that makes the user's
Meridian storage JupyterLab's files (:mod:`meridian_hub.contents`)."""
