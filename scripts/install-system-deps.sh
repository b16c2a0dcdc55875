#!/usr/bin/env bash
# Installs the Debian packages the integration tests run for real (Prometheus,
# promtool, Alertmanager's amtool; Maven and Java for the Kafka broker; Chromium,
# headless, for the replay report), unless they are already there. Needs root or sudo and Debian's apt.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v amtool >/dev/null \
  && command -v mvn >/dev/null && command -v chromium >/dev/null
