"""The engine: job kinds, the client, the worker and its services."""
