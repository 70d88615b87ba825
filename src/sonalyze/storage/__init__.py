"""The storage service: the durable records of Sonalyze over HTTP, on PostgreSQL or SQLite.

``sonalyze.storage.client.StorageClient`` talks to it; ``sonalyze.storage.outbox.Outbox`` lets a
writer service keep its records until storage has acknowledged them.
"""
