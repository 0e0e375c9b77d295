#!/usr/bin/env bash
# Runs once, when the postgres container initialises an empty data directory
# (/docker-entrypoint-initdb.d). Applies every migration of deploy/supabase/migrations, each
# in one transaction as the migration asks (`psql -1`), then lets PostgREST's
# `authenticator` log in: the migration creates it NOLOGIN and without a password on purpose.
#
# The migrations are mounted as a folder, /docker-entrypoint-initdb.d/migrations, which the
# image's entrypoint skips ("ignoring ...") so that this script alone runs them, in order.
set -euo pipefail

: "${AUTHENTICATOR_PASSWORD:?AUTHENTICATOR_PASSWORD must be set for PostgREST to log in}"

# The folder is a setting only so the script can be tried outside the container.
migrations=${SESSIONGATE_MIGRATIONS_DIR:-/docker-entrypoint-initdb.d/migrations}
psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB")

for migration in "$migrations"/*.sql; do
    echo "sessiongate: applying $(basename "$migration")"
    "${psql[@]}" --single-transaction --file "$migration"
done

# psql's :'name' quotes the value as an SQL literal, so any password is safe here.
"${psql[@]}" -v password="$AUTHENTICATOR_PASSWORD" <<'SQL'
alter role authenticator with login password :'password';
SQL
echo "sessiongate: authenticator may log in"
