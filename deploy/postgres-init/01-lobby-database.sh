#!/bin/sh
# The lobby keeps its own database beside the storage service's (created once, on an empty volume).
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE lobby OWNER \"$POSTGRES_USER\""
