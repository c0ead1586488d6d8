#!/usr/bin/env bash
# Installs every Debian 12 package needed to build svccomm and run its whole test suite.
# Non-interactive; does nothing when everything is already installed. Runs apt-get as root,
# or through sudo for a normal user.
set -euo pipefail

PACKAGES=(
	# build
	build-essential cmake pkg-config git ca-certificates
	liblua5.4-dev lua5.4 lua-cjson lua-cjson-dev librabbitmq-dev libpq-dev libssl-dev libmicrohttpd-dev
	luarocks
	# tests: unit (cmocka), specs (busted), sanitizers/valgrind, formatting
	libcmocka-dev lua-busted valgrind clang-format
	# tests: fuzzing (libFuzzer comes with clang's runtime libraries)
	clang libclang-rt-14-dev
	# tests: local servers (scripts/servers.sh) and the integration suite
	rabbitmq-server postgresql util-linux procps
	socat openssl # tests/integration/test_tls.py: a TLS terminator and a test CA
	python3 python3-pytest python3-pika python3-psycopg2
	# tests: the deployment recipes (tests/integration/test_deploy.py: systemd-analyze
	# verify on the units, the Kubernetes YAML parsed)
	systemd python3-yaml
	# packaging: the Debian package (scripts/build-deb.sh) and the man page checks
	dpkg-dev debhelper fakeroot lintian man-db
)

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "install-deps.sh: all ${#PACKAGES[@]} packages present"
	exit 0
fi
echo "install-deps.sh: installing ${missing[*]}"

SUDO=()
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || {
		echo "install-deps.sh: run as root or install sudo; missing: ${missing[*]}" >&2
		exit 1
	}
	SUDO=(sudo)
fi

# Package scripts must not start the system RabbitMQ/PostgreSQL: svccomm runs its own
# (scripts/servers.sh), and in containers there is no init to start them anyway.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
	"${SUDO[@]}" chmod 755 "$policy"
	trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
