#!/bin/sh
# Make one MinIO bucket per service, with a MinIO user that may touch only that bucket.
# Runs in the minio/mc image (MinIO's user and policy management is its admin API, which `mc`
# speaks). Idempotent: an existing bucket, policy or user is updated in place.
#
# Reads: /run/secrets/minio_root_user, /run/secrets/minio_root_password (the administrator) and
# /run/secrets/<service>.toml (the service's own s3_access_key / s3_secret_key).
# Env: SERVICES (space-separated), S3_ENDPOINT (default http://minio:9000).
set -eu

endpoint="${S3_ENDPOINT:-http://minio:9000}"
services="${SERVICES:-auth users orders inventory payments files}"
scheme="${endpoint%%://*}"
hostport="${endpoint#*://}"

# Credentials travel in MC_HOST_<alias>, not argv, so they never show in a process list.
MC_HOST_gr="${scheme}://$(cat /run/secrets/minio_root_user):$(cat /run/secrets/minio_root_password)@${hostport}"
export MC_HOST_gr

toml_value() { # toml_value FILE KEY -> the quoted string value of KEY
    sed -n "s/^$2 = \"\(.*\)\"\$/\1/p" "$1"
}

# MinIO may still be starting even after its healthcheck passed once; retry for up to a minute.
tries=0
until mc ready gr >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "minio at $endpoint not ready" >&2; exit 1; }
    sleep 1
done

for svc in $services; do
    settings="/run/secrets/${svc}.toml"
    key="$(toml_value "$settings" s3_access_key)"
    secret="$(toml_value "$settings" s3_secret_key)"
    [ -n "$key" ] && [ -n "$secret" ] || { echo "$settings: no s3 keys" >&2; exit 1; }

    mc mb --ignore-existing "gr/${svc}"
    policy="/tmp/greenroom-${svc}.json"
    cat > "$policy" <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"],
     "Resource": ["arn:aws:s3:::${svc}", "arn:aws:s3:::${svc}/*"]}
  ]
}
POLICY
    mc admin policy create gr "greenroom-${svc}" "$policy"
    mc admin user add gr "$key" "$secret"
    # Attaching an already attached policy is an error in mc; the state is what we want.
    mc admin policy attach gr "greenroom-${svc}" --user "$key" 2>/dev/null || true
    echo "bucket ${svc}: user ${key} limited to it"
done
