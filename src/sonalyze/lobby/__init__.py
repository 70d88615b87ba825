"""The lobby service: where devices meet, take roles, share the room and run a measurement session."""
