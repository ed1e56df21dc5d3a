# mdstack: the least the pipeline's Vault identity needs (AppRole, Kubernetes or JWT role).
#
# Paths assume the defaults: KV v2 mounted at `secret/` (secrets.vault.kv_mount),
# the pipeline's secrets under `mdstack/`, the database engine at `database/`
# (secrets.vault.database_mount) with roles named `mdstack-*`.
# bootstrap-dev.sh rewrites `secret/` when MDSTACK_KV_MOUNT says otherwise.

# KV v2: read any version of the pipeline's secrets (${vault:mdstack/x#key@3}),
# and their metadata (versions, deletion times) for diagnostics.
path "secret/data/mdstack/*" {
  capabilities = ["read"]
}
path "secret/metadata/mdstack/*" {
  capabilities = ["read"]
}

# Dynamic database credentials: one lease per role per run (${vault-db:mdstack-readonly#password}).
path "database/creds/mdstack-*" {
  capabilities = ["read"]
}

# Keep those leases alive during the run and revoke them at its end. The resolver
# puts the lease id in the URL (sys/leases/renew/<lease_id>), so these grants
# cover only database leases of mdstack roles, not every lease in Vault.
path "sys/leases/renew/database/creds/mdstack-*" {
  capabilities = ["update"]
}
path "sys/leases/revoke/database/creds/mdstack-*" {
  capabilities = ["update"]
}

# The run's own token: look it up, renew it on long runs, revoke it at the end.
# (Vault's `default` policy grants these too; listed so this policy stands alone.)
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
