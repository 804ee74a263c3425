#!/usr/bin/env bash
# The two Debian packages the tests need besides Python: the real Fashion-MNIST (dataset-fashion-mnist, 31 MB)
# and a headless browser for the report page (chromium). Root, or sudo, installs them; nothing if present.
set -euo pipefail
packages=(dataset-fashion-mnist chromium)
dpkg -s "${packages[@]}" >/dev/null 2>&1 && exit 0
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
