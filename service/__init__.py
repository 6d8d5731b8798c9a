"""trainserve service: the API, its settings, tables, spec language, builder and use cases."""
