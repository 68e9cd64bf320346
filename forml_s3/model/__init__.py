"""The registry model: the names a user types, the key layout (making and parsing every key) and the marker JSON.

Pure: no I/O, no store. Everything above it (storage excepted) asks ``layout`` for keys and ``codec`` for markers.
"""
