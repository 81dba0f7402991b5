"""Integrations of restore_ext with model libraries (imported on demand, never by ``import restore_ext``)."""
