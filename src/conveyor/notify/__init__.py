"""Consumers of the event log: the live streams' hub, webhooks and email, and the
dispatcher that turns events into their delivery jobs."""
