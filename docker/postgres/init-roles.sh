#!/usr/bin/env bash
# Runs once, when the database volume is created: the two roles of CONTRACT/README.
#   weflux_owner  owns the schema and runs migrations
#   weflux_app    what the API and worker connect as: not superuser, not BYPASSRLS,
#                 so PostgreSQL row-level security applies to every query it makes
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v owner_password="$WEFLUX_OWNER_PASSWORD" -v app_password="$WEFLUX_APP_PASSWORD" <<'SQL'
CREATE ROLE weflux_owner LOGIN PASSWORD :'owner_password' NOSUPERUSER NOBYPASSRLS NOCREATEROLE;
CREATE ROLE weflux_app LOGIN PASSWORD :'app_password' NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
ALTER DATABASE weflux OWNER TO weflux_owner;
ALTER SCHEMA public OWNER TO weflux_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
