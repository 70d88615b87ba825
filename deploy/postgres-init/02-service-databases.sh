#!/bin/sh
# The measurement and simulation services keep their jobs and simulations in databases of their own on the
# same server (created once, on an empty volume; on an older volume create them by hand the same way).
set -e
for database in measurement simulation; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE $database OWNER \"$POSTGRES_USER\""
done
