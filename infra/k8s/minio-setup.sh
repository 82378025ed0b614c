#!/bin/sh
# Make MinIO ready for the pipeline; safe to run again (every step is idempotent):
#   1. wait until MinIO answers, as its administrator;
#   2. create the project's bucket;
#   3. create the application user and give it read/write access to that bucket only, and no
#      service accounts: an explicit Deny, which MinIO honours where GHSA-jjjj-jwhf-8rgr lets a
#      restricted service account or STS session create new ones (infra/README.md, "MinIO").
# Used by the vos-minio-setup Job (Kubernetes) and the minio-setup service (docker compose).
# Needs: MINIO_URL, MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, VOS_BUCKET and the application's key
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Prints no credential.
set -eu

: "${MINIO_URL:?minio-setup: MINIO_URL is not set}"
: "${VOS_BUCKET:?minio-setup: VOS_BUCKET is not set}"
: "${AWS_ACCESS_KEY_ID:?minio-setup: AWS_ACCESS_KEY_ID (the application key) is not set}"
: "${AWS_SECRET_ACCESS_KEY:?minio-setup: AWS_SECRET_ACCESS_KEY is not set}"

tries=0
until mc alias set vos "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "minio-setup: MinIO at $MINIO_URL did not accept the root credentials within 5 minutes" >&2
    exit 1
  fi
  echo "minio-setup: waiting for MinIO at $MINIO_URL ($tries/60)"
  sleep 5
done

mc mb --ignore-existing "vos/$VOS_BUCKET"

policy_file="${TMPDIR:-/tmp}/vos-bucket-rw.json"
cat >"$policy_file" <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:*"],
      "Resource": ["arn:aws:s3:::$VOS_BUCKET", "arn:aws:s3:::$VOS_BUCKET/*"]
    },
    {
      "Effect": "Deny",
      "Action": ["admin:CreateServiceAccount", "admin:UpdateServiceAccount"]
    }
  ]
}
POLICY
mc admin policy create vos vos-bucket-rw "$policy_file"
mc admin user add vos "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
# `attach` fails when the policy is already attached (a rerun), so detach first; the detach
# itself fails on the first run, when nothing is attached yet.
mc admin policy detach vos vos-bucket-rw --user "$AWS_ACCESS_KEY_ID" >/dev/null 2>&1 || true
mc admin policy attach vos vos-bucket-rw --user "$AWS_ACCESS_KEY_ID" >/dev/null

echo "minio-setup: bucket '$VOS_BUCKET' is ready; the application user may read and write it"
