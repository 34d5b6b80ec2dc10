#!/bin/sh
# Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d):
# the platform's database gets an owner role (migrations) and an app role that owns no
# table (web, control worker), so the running application cannot drop, alter or disable
# the audit trail's triggers. See roles/controlplane-roles.sql and docs/compose.md.
set -eu
psql -v ON_ERROR_STOP=1 \
    -v database="$POSTGRES_DB" \
    -v owner=controlplane_owner -v owner_password="$DB_OWNER_PASSWORD" \
    -v app=controlplane_app -v app_password="$DB_APP_PASSWORD" \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -f /docker-entrypoint-initdb.d/roles/controlplane-roles.sql
