#!/usr/bin/env bash
# Project-local RabbitMQ and PostgreSQL for development and tests.
#
#   scripts/servers.sh start    start both (no-op when running), wait, create vhost/user/database
#   scripts/servers.sh stop     stop both (ok when already stopped), and a pg-standby
#   scripts/servers.sh status   print their state; exit 0 only when both run
#   scripts/servers.sh env      print shell exports: eval "$(scripts/servers.sh env)"
#   scripts/servers.sh reset    drop and recreate the vhost and the database
#   scripts/servers.sh pg-standby start [--sync]|promote|stop|status|env
#                               a streaming replica of the PostgreSQL (port + 10); --sync makes
#                               it synchronous; promote makes it a primary; stop removes it
#   scripts/servers.sh cluster start|stop|status|env|kill-node N|start-node N
#                               a 3-node RabbitMQ cluster (see "cluster" below)
#
# State lives in <repo>/.local (git-ignored). The servers use their own ports, node name and
# socket directory, so a system RabbitMQ or PostgreSQL on the machine is never touched:
#   RabbitMQ   svccomm@localhost, AMQP 127.0.0.1:5673, distribution 127.0.0.1:25673, its own
#              epmd on 127.0.0.1:25674, vhost "svccomm", user svccomm (no administrator tag,
#              permissions on its vhost only), no guest user
#   PostgreSQL 127.0.0.1:5433, unix socket in .local/pg (mode 0700), role and database
#              "svccomm", scram-sha-256 authentication on the socket and TCP
# Both passwords are generated at the first start and kept in .local/rabbitmq/password and
# .local/pg/password (mode 0600); `env` prints URLs that carry them. Administration goes
# through rabbitmqctl (the Erlang cookie, .local/rabbitmq/.erlang.cookie, mode 0400), never
# an AMQP account. State written by an older servers.sh (trust authentication, the fixed
# svccomm/svccomm account, epmd on all interfaces) is upgraded by the next start or reset.
# As root, the servers run as the "rabbitmq" and "postgres" users (initdb and pg_ctl refuse
# root); as a normal user they run as that user.
#
# cluster: three more RabbitMQ nodes joined into one cluster (rabbitmqctl join_cluster), for
# tests of node loss with quorum queues: svccomm-c1..3@localhost, AMQP 127.0.0.1:5680-5682,
# distribution 25680-25682, their own epmd on 25683, one Erlang cookie, the same vhost and
# user as the single node (own password), state in .local/cluster. `cluster env` prints
# SVCCOMM_CLUSTER_URLS (the three URLs, comma-separated: a BROKER_CONNECTION_URL list) and
# SVCCOMM_CLUSTER_URL_1..3; `cluster kill-node N` kill -9s node N's Erlang VM, `cluster
# start-node N` starts it again and returns once it runs in the cluster again. Starting three
# nodes takes one to three minutes on a loaded machine. Overrides: SVCCOMM_CLUSTER_NODE (name
# prefix), SVCCOMM_CLUSTER_AMQP_PORT, SVCCOMM_CLUSTER_DIST_PORT (the first of three),
# SVCCOMM_CLUSTER_EPMD_PORT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# runuser and the server scripts live in sbin folders, which a minimal PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# The SVCCOMM_SERVERS_* overrides exist to run a second set beside the first (a second
# checkout); everything else assumes the defaults.
RMQ_NODE=${SVCCOMM_SERVERS_NODE:-svccomm@localhost}
RMQ_PORT=${SVCCOMM_SERVERS_AMQP_PORT:-5673}
RMQ_DIST_PORT=${SVCCOMM_SERVERS_DIST_PORT:-25673}
# A private epmd: the machine-wide one on port 4369 usually listens on every interface, and
# epmd -kill cannot stop it while another node is registered there.
RMQ_EPMD_PORT=${SVCCOMM_SERVERS_EPMD_PORT:-$((RMQ_DIST_PORT + 1))}
RMQ_VHOST=svccomm
RMQ_USER=svccomm
PG_PORT=${SVCCOMM_SERVERS_PG_PORT:-5433}
PG_USER=svccomm
PG_DB=svccomm
START_TIMEOUT=${SVCCOMM_SERVERS_TIMEOUT:-120}

die() {
	echo "servers.sh: $*" >&2
	exit 1
}
say() { echo "servers.sh: $*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

# --- where things are -------------------------------------------------------------------------

find_pg_bindir() {
	if [ -n "${SVCCOMM_PG_BINDIR:-}" ]; then
		echo "$SVCCOMM_PG_BINDIR"
	elif [ -x /usr/lib/postgresql/15/bin/initdb ]; then
		echo /usr/lib/postgresql/15/bin
	else
		# Any other installed major version, newest first.
		local d
		d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
		[ -n "$d" ] || d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
		echo "$d"
	fi
}

find_rmq_bindir() {
	if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
		# Debian: call the real scripts, not the /usr/sbin wrapper (it refuses non-root users
		# and forces the system cookie in /var/lib/rabbitmq).
		echo /usr/lib/rabbitmq/bin
	else
		dirname "$(command -v rabbitmq-server 2>/dev/null || echo /nonexistent/rabbitmq-server)"
	fi
}

PG_BIN=$(find_pg_bindir)
RMQ_BIN=$(find_rmq_bindir)

# Commands run as the service users when we are root.
if is_root; then
	RUNUSER=$(command -v runuser) || die "runuser not found (package util-linux)"
	AS_PG=("$RUNUSER" -u postgres --)
	AS_RMQ=("$RUNUSER" -u rabbitmq --)
else
	AS_PG=()
	AS_RMQ=()
fi

# The state folder is <repo>/.local. As root, the service users must be able to reach it; a
# clone under a private home (e.g. /root, mode 700) cannot be reached, and a long path would
# overflow the unix socket path limit. Then .local becomes a symlink to a folder in /var/tmp.
state_usable_at() {
	local dir=$1
	[ ${#dir} -le 80 ] || return 1
	if is_root; then
		runuser -u postgres -- test -x "$dir" 2>/dev/null || return 1
		runuser -u rabbitmq -- test -x "$dir" 2>/dev/null || return 1
	fi
	return 0
}

# Where .local points, or would point once created (without creating anything).
alt_state_dir() {
	echo "/var/tmp/svccomm-state-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
}

set_paths() {
	STATE=$1
	RDIR=$STATE/rabbitmq
	PGDIR=$STATE/pg
	PGDATA=$PGDIR/data
	PGLOG=$PGDIR/postgresql.log
	PG_PWFILE=$PGDIR/password
	RMQ_PWFILE=$RDIR/password
	SBDIR=$STATE/pg-standby
	SBDATA=$SBDIR/data
	SBLOG=$SBDIR/postgresql.log
	RMQ_STARTUP_LOG=$STATE/rabbitmq-startup.log
}

resolve_state() {
	local local_dir=$ROOT/.local
	if [ ! -e "$local_dir" ] && ! state_usable_at "$ROOT"; then
		local alt
		alt=$(alt_state_dir)
		mkdir -p "$alt"
		chmod 755 "$alt"
		ln -s "$alt" "$local_dir"
	fi
	mkdir -p "$local_dir"
	set_paths "$(cd "$local_dir" && pwd -P)"
}

# The same paths for status/env, which must not create anything.
peek_state() {
	if [ -e "$ROOT/.local" ]; then
		set_paths "$(cd "$ROOT/.local" && pwd -P)"
	elif state_usable_at "$ROOT"; then
		set_paths "$ROOT/.local"
	else
		set_paths "$(alt_state_dir)"
	fi
}

# --- secrets ------------------------------------------------------------------------------------

# Creates file (mode 0600) holding a new random password unless it exists; SECRET_NEW=1 when
# it was created. Hex only: it goes into URLs, SQL and JSON without quoting.
ensure_secret() {
	local file=$1
	SECRET_NEW=0
	[ -s "$file" ] && return 0
	(
		umask 077
		od -An -N18 -tx1 /dev/urandom | tr -d ' \n' >"$file.tmp"
	)
	mv "$file.tmp" "$file"
	chmod 600 "$file"
	SECRET_NEW=1
}

read_secret() { cat "$1" 2>/dev/null; }

# --- RabbitMQ -----------------------------------------------------------------------------------

rmq_env() {
	# HOME decides which .erlang.cookie the server and rabbitmqctl use: ours, in $RDIR.
	# ERL_EPMD_*: the epmd the server starts listens on loopback only, on our own port.
	local epmd=(ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$RMQ_EPMD_PORT")
	RMQ_ENV=(
		HOME="$RDIR"
		"${epmd[@]}"
		RABBITMQ_NODENAME="$RMQ_NODE"
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT="$RMQ_PORT"
		RABBITMQ_DIST_PORT="$RMQ_DIST_PORT"
		RABBITMQ_MNESIA_BASE="$RDIR/mnesia"
		RABBITMQ_LOG_BASE="$RDIR/log"
		RABBITMQ_PID_FILE="$RDIR/pid"
		RABBITMQ_ENABLED_PLUGINS_FILE="$RDIR/enabled_plugins"
		RABBITMQ_CONFIG_FILE="$RDIR/rabbitmq"
		RABBITMQ_ADVANCED_CONFIG_FILE="$RDIR/advanced.config"
		RABBITMQ_CONF_ENV_FILE="$RDIR/rabbitmq-env.conf"
	)
	# The CLI's own short-lived node listens for distribution too: on loopback as well.
	RMQCTL=("${AS_RMQ[@]}" env -C "$RDIR" HOME="$RDIR" "${epmd[@]}"
		"RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
		"$RMQ_BIN/rabbitmqctl" -n "$RMQ_NODE")
	# The node as an older servers.sh started it: registered with the machine-wide epmd.
	RMQCTL_OLD=("${AS_RMQ[@]}" env -C "$RDIR" HOME="$RDIR" ERL_EPMD_PORT=4369
		ERL_EPMD_ADDRESS=127.0.0.1 "$RMQ_BIN/rabbitmqctl" -n "$RMQ_NODE")
}

rmq_prepare() {
	mkdir -p "$RDIR/mnesia" "$RDIR/log"
	chmod 700 "$RDIR"
	ensure_secret "$RMQ_PWFILE"
	SECRET_NEW_RMQ=$SECRET_NEW
	[ -f "$RDIR/enabled_plugins" ] || echo '[].' >"$RDIR/enabled_plugins"
	[ -f "$RDIR/rabbitmq-env.conf" ] || : >"$RDIR/rabbitmq-env.conf"
	# Rewritten at every start. The default user is what a new node creates at its first boot
	# instead of guest/guest (an administrator any local user could log in as).
	(
		umask 077
		cat >"$RDIR/rabbitmq.conf" <<-EOF
			# Written by scripts/servers.sh: a local test node.
			disk_free_limit.absolute = 50MB
			default_vhost = $RMQ_VHOST
			default_user = $RMQ_USER
			default_pass = $(read_secret "$RMQ_PWFILE")
			default_user_tags.administrator = false
		EOF
	)
	chmod 600 "$RDIR/rabbitmq.conf" # an older servers.sh wrote it 0644
	# Keep Erlang distribution on the loopback interface as well.
	[ -f "$RDIR/advanced.config" ] ||
		echo '[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].' >"$RDIR/advanced.config"
	if [ ! -s "$RDIR/.erlang.cookie" ]; then
		(
			umask 077
			od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$RDIR/.erlang.cookie"
		)
		chmod 400 "$RDIR/.erlang.cookie"
	fi
	if is_root; then
		chown -R rabbitmq:rabbitmq "$RDIR"
	fi
}

rmq_running() {
	[ -d "$RDIR" ] || return 1
	"${RMQCTL[@]}" status >/dev/null 2>&1
}

# Our node, started by an older servers.sh, registered with the machine-wide epmd.
rmq_old_running() {
	[ -d "$RDIR" ] || return 1
	# Without an epmd on 4369 there is no such node (and rabbitmqctl would start an epmd).
	port_open 4369 || return 1
	"${RMQCTL_OLD[@]}" status >/dev/null 2>&1
}

# The epmd on port 4369, when it listens on every interface and no node is registered any
# more, was left by an older servers.sh: stop it (the next Erlang node starts a fresh one).
old_epmd_retire() {
	local names
	names=$(ERL_EPMD_PORT=4369 epmd -names 2>/dev/null) || return 0
	grep -q '^name ' <<<"$names" && return 0
	ss -Hltn 'sport = :4369' 2>/dev/null | grep -qE '(0\.0\.0\.0|\[::\]|\*):4369' || return 0
	say "epmd: stopping the unused epmd on all interfaces (port 4369)"
	ERL_EPMD_PORT=4369 epmd -kill >/dev/null 2>&1 || true
}

port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

rmq_start() {
	if rmq_running; then
		say "rabbitmq: already running ($RMQ_NODE)"
		return 0
	fi
	if port_open "$RMQ_PORT" && rmq_old_running; then
		say "rabbitmq: $RMQ_NODE was started by an older servers.sh: restarting it"
		rmq_stop_node RMQCTL_OLD
		old_epmd_retire
	fi
	if port_open "$RMQ_PORT"; then
		die "port $RMQ_PORT is taken by another process; is another svccomm checkout running its servers?"
	fi
	rmq_prepare
	say "rabbitmq: starting $RMQ_NODE on port $RMQ_PORT (log: $RDIR/log)"
	# setsid: the node must outlive this script and not get the terminal's signals.
	setsid "${AS_RMQ[@]}" env -C "$RDIR" "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server" \
		>"$RMQ_STARTUP_LOG" 2>&1 </dev/null 9>&- &
	local pid=$! deadline=$((SECONDS + START_TIMEOUT))
	until "${RMQCTL[@]}" await_startup --timeout 10 >/dev/null 2>&1; do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 30 "$RMQ_STARTUP_LOG" >&2 || true
			die "rabbitmq: the node exited during startup (see $RMQ_STARTUP_LOG and $RDIR/log)"
		fi
		[ $SECONDS -lt $deadline ] || die "rabbitmq: not up after ${START_TIMEOUT}s (see $RDIR/log)"
		sleep 0.5
	done
	until port_open "$RMQ_PORT"; do
		[ $SECONDS -lt $deadline ] || die "rabbitmq: port $RMQ_PORT not open after ${START_TIMEOUT}s"
		sleep 0.2
	done
}

# The users are exactly svccomm without tags (guest gone) and svccomm may use its vhost.
rmq_users_ok() {
	[ "$("${RMQCTL[@]}" -q list_users --no-table-headers 2>/dev/null)" = "$RMQ_USER	[]" ]
}

rmq_has_setup() {
	"${RMQCTL[@]}" -q list_permissions -p "$RMQ_VHOST" 2>/dev/null | cut -f1 | grep -qx "$RMQ_USER"
}

rmq_setup() {
	# One rabbitmqctl call costs about a second (it boots an Erlang VM): look first, then one
	# idempotent definitions import sets the vhost, the user (password, no tags) and its
	# permissions. A password file created by this start always goes through the import.
	ensure_secret "$RMQ_PWFILE"
	local fresh=$SECRET_NEW
	[ "${SECRET_NEW_RMQ:-0}" = 1 ] && fresh=1
	SECRET_NEW_RMQ=0
	if [ "$fresh" != 1 ] && rmq_users_ok && rmq_has_setup; then
		return 0
	fi
	local defs=$RDIR/definitions.json perm='"configure": ".*", "write": ".*", "read": ".*"'
	(
		umask 077
		cat >"$defs" <<-EOF
			{
			  "vhosts": [{"name": "$RMQ_VHOST"}],
			  "users": [{"name": "$RMQ_USER", "password": "$(read_secret "$RMQ_PWFILE")", "tags": []}],
			  "permissions": [{"user": "$RMQ_USER", "vhost": "$RMQ_VHOST", $perm}]
			}
		EOF
	)
	if is_root; then
		chown rabbitmq:rabbitmq "$defs"
	fi
	"${RMQCTL[@]}" -q import_definitions "$defs" >/dev/null
	rm -f "$defs"
	# guest (administrator, password guest) exists on nodes an older servers.sh created.
	if "${RMQCTL[@]}" -q list_users --no-table-headers | cut -f1 | grep -qx guest; then
		say "rabbitmq: deleting user guest"
		"${RMQCTL[@]}" -q delete_user guest >/dev/null
	fi
	# The import is asynchronous: wait until its last step, the permissions, is visible.
	local deadline=$((SECONDS + 30))
	until rmq_has_setup && rmq_users_ok; do
		[ $SECONDS -lt $deadline ] || die "rabbitmq: vhost $RMQ_VHOST and user $RMQ_USER not set up after 30s"
		sleep 0.2
	done
}

# Stops the node with the rabbitmqctl command in the array named $1 and waits for the VM.
rmq_stop_node() {
	local -n ctl=$1
	say "rabbitmq: stopping $RMQ_NODE"
	local pid=""
	[ -f "$RDIR/pid" ] && pid=$(cat "$RDIR/pid" 2>/dev/null || true)
	"${ctl[@]}" -q stop >/dev/null
	# rabbitmqctl stop returns once the node acknowledged; wait for the VM to go away.
	local deadline=$((SECONDS + 60))
	while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
		[ $SECONDS -lt $deadline ] || die "rabbitmq: node (pid $pid) still alive after 60s"
		sleep 0.2
	done
}

rmq_stop() {
	if rmq_running; then
		rmq_stop_node RMQCTL
		# Our epmd serves only this node; it refuses to stop while a node is registered.
		ERL_EPMD_PORT=$RMQ_EPMD_PORT epmd -kill >/dev/null 2>&1 || true
	elif rmq_old_running; then
		rmq_stop_node RMQCTL_OLD
		old_epmd_retire
	else
		say "rabbitmq: not running"
	fi
}

# --- PostgreSQL ---------------------------------------------------------------------------------

PG_LISTEN=127.0.0.1
PG_OPTS() { echo "-p $PG_PORT -k $PGDIR -c listen_addresses=$PG_LISTEN"; }

# The socket directory (also holding the data, the log and the password) is the server
# user's alone: no other local user reaches the socket.
pg_secure_dir() {
	mkdir -p "$PGDIR"
	chmod 700 "$PGDIR"
	if is_root; then
		chown postgres:postgres "$PGDIR"
	fi
	ensure_secret "$PG_PWFILE"
}

pg_prepare() {
	pg_secure_dir
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		say "postgresql: initdb $PGDATA"
		# initdb runs as postgres: it reads a copy the server user owns, removed right after.
		local pwcopy=$PGDIR/.initdb-password
		read_secret "$PG_PWFILE" | "${AS_PG[@]}" sh -c 'umask 077 && cat >"$1"' sh "$pwcopy"
		LC_ALL=C "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PGDATA" -A scram-sha-256 \
			--pwfile="$pwcopy" -U "$PG_USER" -E UTF8 --no-locale --no-sync \
			>"$STATE/initdb.log" 2>&1 ||
			{
				rm -f "$pwcopy"
				cat "$STATE/initdb.log" >&2
				die "postgresql: initdb failed"
			}
		rm -f "$pwcopy"
	fi
}

# scram-sha-256 on the socket and on 127.0.0.1; nothing else is accepted.
PG_HBA='# Written by scripts/servers.sh at every start.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    replication  svccomm  127.0.0.1/32  scram-sha-256
'

# Writes pg_hba.conf when it differs (an older servers.sh used trust); 0 when it changed.
pg_write_hba() {
	local hba=$PGDATA/pg_hba.conf
	[ "$(cat "$hba" 2>/dev/null)" = "${PG_HBA%$'\n'}" ] && return 1
	printf '%s' "$PG_HBA" | "${AS_PG[@]}" tee "$hba" >/dev/null
	"${AS_PG[@]}" chmod 600 "$hba"
	return 0
}

# The server of data directory $1 runs.
pg_data_running() {
	[ -s "$1/PG_VERSION" ] || return 1
	LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1
}

pg_running() { pg_data_running "$PGDATA"; }

# Starts the server of data directory $2 (named $1 in messages) with log $3 and options $4;
# on failure shows the end of its log and stops the script.
pg_ctl_start() {
	LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$2" -l "$3" -o "$4" \
		-w -t "$START_TIMEOUT" start >/dev/null 9>&- ||
		{
			tail -n 30 "$3" >&2 || true
			die "$1: pg_ctl start failed (see $3)"
		}
}

# psql as the svccomm role to the server with socket directory $1 and port $2.
psql_at() {
	local dir=$1 port=$2
	shift 2
	PGPASSWORD=$(read_secret "$PG_PWFILE") PGPASSFILE=/dev/null \
		psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U "$PG_USER" -d postgres "$@"
}

psql_admin() { psql_at "$PGDIR" "$PG_PORT" "$@"; }

pg_start() {
	if pg_running; then
		say "postgresql: already running (port $PG_PORT)"
		return 0
	fi
	if port_open "$PG_PORT"; then
		die "port $PG_PORT is taken by another process; is another svccomm checkout running its servers?"
	fi
	pg_prepare
	say "postgresql: starting on port $PG_PORT (log: $PGLOG)"
	pg_ctl_start postgresql "$PGDATA" "$PGLOG" "$(PG_OPTS)"
	local deadline=$((SECONDS + START_TIMEOUT))
	until pg_isready -q -h "$PGDIR" -p "$PG_PORT" && pg_isready -q -h "$PG_LISTEN" -p "$PG_PORT"; do
		[ $SECONDS -lt $deadline ] || die "postgresql: not accepting connections after ${START_TIMEOUT}s"
		sleep 0.2
	done
}

pg_setup() {
	pg_secure_dir
	# The password is (re)set before pg_hba.conf asks for it: a cluster of an older
	# servers.sh still trusts every connection here.
	psql_admin <<-EOF || die "postgresql: cannot log in as $PG_USER with the password in $PG_PWFILE (replaced? remove $PGDIR to start a new cluster)"
		DO \$\$
		BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
				CREATE ROLE $PG_USER LOGIN SUPERUSER;
			END IF;
		END
		\$\$;
		SET password_encryption = 'scram-sha-256';
		ALTER ROLE $PG_USER PASSWORD '$(read_secret "$PG_PWFILE")';
		SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
		 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')\gexec
	EOF
	if pg_write_hba; then
		say "postgresql: pg_hba.conf: scram-sha-256 only"
		LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" reload >/dev/null
	fi
	# An older servers.sh listened on "localhost": restart on 127.0.0.1 only.
	if [ "$(psql_admin -At -c 'SHOW listen_addresses')" != "$PG_LISTEN" ]; then
		say "postgresql: restarting to listen on $PG_LISTEN only"
		LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -o "$(PG_OPTS)" \
			-m fast -w -t "$START_TIMEOUT" restart >/dev/null 9>&-
	fi
}

pg_stop() {
	if ! pg_running; then
		say "postgresql: not running"
		return 0
	fi
	say "postgresql: stopping"
	LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
}

# --- PostgreSQL standby -------------------------------------------------------------------------
# A streaming replica of the cluster above, made by pg_basebackup into .local/pg-standby and
# listening on PG_PORT + 10 (SVCCOMM_SERVERS_PG_STANDBY_PORT), socket in .local/pg-standby. It
# replicates as role svccomm over TCP with scram-sha-256 (the password in a passfile of mode
# 0600, never in argv); with --sync the primary waits for it at every COMMIT
# (synchronous_standby_names). A stopped standby is removed: the next start takes a new base
# backup.

SB_PORT=${SVCCOMM_SERVERS_PG_STANDBY_PORT:-$((PG_PORT + 10))}
SB_NAME=svccomm_standby
SB_OPTS() { echo "-p $SB_PORT -k $SBDIR -c listen_addresses=$PG_LISTEN"; }

sb_running() { pg_data_running "$SBDATA"; }

psql_standby() { psql_at "$SBDIR" "$SB_PORT" "$@"; }

# synchronous_standby_names on the primary: the standby's name (--sync) or none.
sb_set_sync() {
	if [ "$1" = 1 ]; then
		psql_admin -c "ALTER SYSTEM SET synchronous_standby_names = '$SB_NAME'"
	else
		psql_admin -c "ALTER SYSTEM RESET synchronous_standby_names"
	fi
	psql_admin -c "SELECT pg_reload_conf()" >/dev/null
}

sb_start() {
	local sync=0
	case "${1:-}" in
	--sync) sync=1 ;;
	"") ;;
	*) die "pg-standby start: unknown option $1 (usage: pg-standby start [--sync])" ;;
	esac
	pg_running || die "postgresql is not running: scripts/servers.sh start"
	if sb_running; then
		say "pg-standby: already running (port $SB_PORT)"
		sb_set_sync "$sync"
		return 0
	fi
	if port_open "$SB_PORT"; then
		die "port $SB_PORT is taken by another process"
	fi
	# the replication line of pg_hba.conf (a primary started by an older servers.sh lacks it)
	if pg_write_hba; then
		LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" reload >/dev/null
	fi
	rm -rf "$SBDIR"
	mkdir -p "$SBDIR"
	chmod 700 "$SBDIR"
	if is_root; then
		chown postgres:postgres "$SBDIR"
	fi
	# pg_basebackup -R writes the passfile's path (not the password) into primary_conninfo.
	local pass=$SBDIR/pgpass
	printf '127.0.0.1:%s:*:%s:%s\n' "$PG_PORT" "$PG_USER" "$(read_secret "$PG_PWFILE")" |
		"${AS_PG[@]}" sh -c 'umask 077 && cat >"$1"' sh "$pass"
	say "pg-standby: base backup of port $PG_PORT into $SBDATA"
	LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_basebackup" -D "$SBDATA" -R -X stream -c fast --no-sync \
		-d "host=127.0.0.1 port=$PG_PORT user=$PG_USER passfile=$pass application_name=$SB_NAME" \
		>"$SBDIR/basebackup.log" 2>&1 ||
		{
			cat "$SBDIR/basebackup.log" >&2
			die "pg-standby: pg_basebackup failed"
		}
	# the primary's settings came with the copy: not its synchronous_standby_names
	"${AS_PG[@]}" sed -i '/^synchronous_standby_names/d' "$SBDATA/postgresql.auto.conf"
	say "pg-standby: starting on port $SB_PORT (log: $SBLOG)"
	pg_ctl_start pg-standby "$SBDATA" "$SBLOG" "$(SB_OPTS)"
	local deadline=$((SECONDS + START_TIMEOUT))
	until [ "$(psql_admin -At -c "SELECT state FROM pg_stat_replication WHERE application_name = '$SB_NAME'")" = streaming ]; do
		[ $SECONDS -lt $deadline ] || die "pg-standby: not streaming after ${START_TIMEOUT}s (see $SBLOG)"
		sleep 0.2
	done
	sb_set_sync "$sync"
	say "pg-standby: streaming from port $PG_PORT$([ $sync = 1 ] && echo ', synchronous')"
}

sb_promote() {
	sb_running || die "pg-standby is not running: scripts/servers.sh pg-standby start"
	say "pg-standby: promoting (port $SB_PORT)"
	LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$SBDATA" -w -t "$START_TIMEOUT" promote >/dev/null
}

sb_stop() {
	if sb_running; then
		say "pg-standby: stopping"
		LC_ALL=C "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$SBDATA" -m fast -w stop >/dev/null
	else
		say "pg-standby: not running"
	fi
	# a primary waiting for this standby would wait at every COMMIT
	if pg_running; then
		sb_set_sync 0
	elif [ -f "$PGDATA/postgresql.auto.conf" ]; then
		"${AS_PG[@]}" sed -i '/^synchronous_standby_names/d' "$PGDATA/postgresql.auto.conf"
	fi
	rm -rf "$SBDIR"
}

sb_status() {
	if ! sb_running; then
		echo "pg-standby: stopped"
		return 1
	fi
	local role sync=""
	role=$(psql_standby -At -c "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary (promoted)' END")
	if pg_running; then
		sync=$(psql_admin -At -c "SELECT ', ' || state || ', ' || sync_state FROM pg_stat_replication WHERE application_name = '$SB_NAME'" 2>/dev/null || true)
	fi
	echo "pg-standby: running  port $SB_PORT, $role$sync, data $SBDATA"
}

sb_env() {
	local pgpw
	pgpw=$(read_secret "$PG_PWFILE") || true
	local auth=$PG_USER${pgpw:+:$pgpw}
	echo "export SVCCOMM_STANDBY_DATABASE_URL=postgresql://$auth@localhost:$SB_PORT/$PG_DB"
	echo "export SVCCOMM_FAILOVER_DATABASE_URL='postgresql://$auth@localhost:$PG_PORT,localhost:$SB_PORT/$PG_DB?target_session_attrs=read-write'"
}

cmd_pg_standby() {
	local sub=${1:-}
	[ $# -gt 0 ] && shift
	case "$sub" in
	start | promote | stop)
		check_tools
		resolve_state
		lock
		"sb_$sub" "$@"
		;;
	status)
		peek_state
		sb_status
		;;
	env)
		peek_state
		sb_env
		;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

# --- commands -----------------------------------------------------------------------------------

check_tools() {
	local t
	for t in "$RMQ_BIN/rabbitmq-server" "$RMQ_BIN/rabbitmqctl" "$PG_BIN/initdb" "$PG_BIN/pg_ctl"; do
		[ -x "$t" ] || die "$t not found: run scripts/install-deps.sh (packages rabbitmq-server, postgresql)"
	done
	command -v psql >/dev/null || die "psql not found (package postgresql-client)"
	command -v pg_isready >/dev/null || die "pg_isready not found (package postgresql-client)"
	if is_root; then
		id -u rabbitmq >/dev/null 2>&1 || die "user rabbitmq missing (package rabbitmq-server)"
		id -u postgres >/dev/null 2>&1 || die "user postgres missing (package postgresql)"
	fi
}

# Serialises start/stop/reset. The servers must not inherit fd 9 (they would hold the lock).
lock() {
	exec 9>"$STATE/.lock"
	flock 9
}

cmd_start() {
	check_tools
	resolve_state
	lock
	rmq_env
	local t0=$SECONDS
	# PostgreSQL starts in about a second; do it while the Erlang VM boots.
	pg_start
	rmq_start
	pg_setup
	rmq_setup
	say "ready in $((SECONDS - t0))s: amqp://$RMQ_USER@localhost:$RMQ_PORT/$RMQ_VHOST, postgresql://$PG_USER@localhost:$PG_PORT/$PG_DB"
}

cmd_stop() {
	check_tools
	resolve_state
	lock
	rmq_env
	rmq_stop
	# a standby of a stopped primary would only retry; it goes with it
	if sb_running; then
		sb_stop
	fi
	pg_stop
}

cmd_status() {
	peek_state
	rmq_env
	local rc=0
	if rmq_running; then
		echo "rabbitmq:   running  node $RMQ_NODE, amqp port $RMQ_PORT, vhost $RMQ_VHOST"
	elif rmq_old_running; then
		echo "rabbitmq:   running as an older servers.sh started it (start or reset upgrades it)"
		rc=1
	else
		echo "rabbitmq:   stopped"
		rc=1
	fi
	if pg_running; then
		echo "postgresql: running  port $PG_PORT, socket dir $PGDIR, database $PG_DB"
	else
		echo "postgresql: stopped"
		rc=1
	fi
	if sb_running; then
		sb_status
	fi
	echo "state:      $STATE"
	return $rc
}

# Quote a command (array) as one shell word list, then as one value for an export line.
quote_cmd() {
	local out="" w
	for w in "$@"; do
		out+="$(printf '%q' "$w") "
	done
	printf '%s' "${out% }"
}

cmd_env() {
	peek_state
	rmq_env
	local pgctl=("${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG") rpw pgpw
	rpw=$(read_secret "$RMQ_PWFILE") || true
	pgpw=$(read_secret "$PG_PWFILE") || true
	[ -n "$rpw" ] && [ -n "$pgpw" ] ||
		say "no password in $RMQ_PWFILE or $PG_PWFILE (not started yet, or not yours to read)"
	echo "export SVCCOMM_BROKER_URL=amqp://$RMQ_USER${rpw:+:$rpw}@localhost:$RMQ_PORT/$RMQ_VHOST"
	echo "export SVCCOMM_DATABASE_URL=postgresql://$PG_USER${pgpw:+:$pgpw}@localhost:$PG_PORT/$PG_DB"
	echo "export SVCCOMM_TEST_RABBITMQCTL=$(printf '%q' "$(quote_cmd "${RMQCTL[@]}")")"
	echo "export SVCCOMM_TEST_PGCTL=$(printf '%q' "$(quote_cmd "${pgctl[@]}")")"
	echo "export SVCCOMM_TEST_PGDATA=$(printf '%q' "$PGDATA")"
	echo "export SVCCOMM_TEST_PGHOST=$(printf '%q' "$PGDIR")"
	echo "export SVCCOMM_TEST_EPMD_PORT=$RMQ_EPMD_PORT"
}

cmd_reset() {
	check_tools
	resolve_state
	lock
	rmq_env
	# A node of an older servers.sh is restarted the new way first.
	if ! rmq_running && rmq_old_running; then
		rmq_start
	fi
	rmq_running || die "rabbitmq is not running: scripts/servers.sh start"
	pg_running || die "postgresql is not running: scripts/servers.sh start"
	say "reset: dropping vhost $RMQ_VHOST and database $PG_DB"
	"${RMQCTL[@]}" -q delete_vhost "$RMQ_VHOST" >/dev/null 2>&1 || true
	psql_admin -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)"
	pg_setup
	rmq_setup
}

# --- RabbitMQ cluster ---------------------------------------------------------------------------

CLUSTER_SIZE=3
CLUSTER_PREFIX=${SVCCOMM_CLUSTER_NODE:-svccomm-c}
CLUSTER_AMQP_PORT=${SVCCOMM_CLUSTER_AMQP_PORT:-5680}
CLUSTER_DIST_PORT=${SVCCOMM_CLUSTER_DIST_PORT:-25680}
CLUSTER_EPMD_PORT=${SVCCOMM_CLUSTER_EPMD_PORT:-$((CLUSTER_DIST_PORT + CLUSTER_SIZE))}

# Points the RabbitMQ functions above at cluster node $1 (1..3): its name, ports and folder,
# the cluster's epmd and password. Every node's folder holds a copy of one cookie.
cluster_node() {
	local n=$1
	case "$n" in
	[1-9]) [ "$n" -le $CLUSTER_SIZE ] || die "cluster: no node $n (1..$CLUSTER_SIZE)" ;;
	*) die "cluster: no node '$n' (1..$CLUSTER_SIZE)" ;;
	esac
	CDIR=$STATE/cluster
	RDIR=$CDIR/n$n
	RMQ_PWFILE=$CDIR/password
	RMQ_NODE=$CLUSTER_PREFIX$n@localhost
	RMQ_PORT=$((CLUSTER_AMQP_PORT + n - 1))
	RMQ_DIST_PORT=$((CLUSTER_DIST_PORT + n - 1))
	RMQ_EPMD_PORT=$CLUSTER_EPMD_PORT
	RMQ_STARTUP_LOG=$CDIR/n$n-startup.log
	rmq_env
}

cluster_prepare() {
	CDIR=$STATE/cluster
	mkdir -p "$CDIR"
	chmod 755 "$CDIR"
	ensure_secret "$CDIR/password"
	if [ ! -s "$CDIR/.erlang.cookie" ]; then
		(
			umask 077
			od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$CDIR/.erlang.cookie"
		)
	fi
	local n
	for n in $(seq 1 $CLUSTER_SIZE); do
		mkdir -p "$CDIR/n$n"
		if ! cmp -s "$CDIR/.erlang.cookie" "$CDIR/n$n/.erlang.cookie"; then
			rm -f "$CDIR/n$n/.erlang.cookie"
			cp "$CDIR/.erlang.cookie" "$CDIR/n$n/.erlang.cookie"
			chmod 400 "$CDIR/n$n/.erlang.cookie"
		fi
	done
	if is_root; then
		chown rabbitmq:rabbitmq "$CDIR" "$CDIR/password" "$CDIR/.erlang.cookie"
	fi
}

# The Erlang VM of node $1 runs (its pid file names a live process).
cluster_alive() {
	local pid
	pid=$(cat "$STATE/cluster/n$1/pid" 2>/dev/null) || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Evaluates an Erlang expression on the current cluster node; prints the result.
cluster_eval() {
	"${RMQCTL[@]}" -q eval "$1" 2>/dev/null
}

# Starts the nodes given as arguments at once (each boot takes a while) and waits for all.
cluster_start_nodes() {
	local n pids=() failed=0
	for n in "$@"; do
		(
			cluster_node "$n"
			rmq_start
		) &
		pids+=($!)
	done
	for n in "${pids[@]}"; do
		wait "$n" || failed=1
	done
	[ $failed = 0 ] || die "cluster: a node did not start (logs in $STATE/cluster/n*/log)"
}

# Node $1 joins node 1's cluster unless it is a member already.
cluster_join() {
	local n=$1 first=$CLUSTER_PREFIX"1@localhost"
	cluster_node "$n"
	if cluster_eval 'rabbit_nodes:all().' | grep -q "'$first'"; then
		return 0
	fi
	say "cluster: $RMQ_NODE joins $first"
	local step log=$CDIR/join.log
	for step in stop_app reset "join_cluster $first" start_app; do
		# shellcheck disable=SC2086 # the step is a command and its argument
		"${RMQCTL[@]}" -q $step >>"$log" 2>&1 ||
			{
				tail -n 20 "$log" >&2
				die "cluster: $RMQ_NODE: rabbitmqctl $step failed (see $log)"
			}
	done
}

cluster_start() {
	cluster_prepare
	local t0=$SECONDS n
	# Members of a cluster wait for each other at boot: start all of them together.
	START_TIMEOUT=${SVCCOMM_SERVERS_TIMEOUT:-300}
	cluster_start_nodes $(seq 1 $CLUSTER_SIZE)
	for n in $(seq 2 $CLUSTER_SIZE); do
		cluster_join "$n"
	done
	cluster_node 1
	rmq_setup
	say "cluster: ready in $((SECONDS - t0))s: ports $CLUSTER_AMQP_PORT-$((CLUSTER_AMQP_PORT + CLUSTER_SIZE - 1)), vhost $RMQ_VHOST"
}

cluster_stop() {
	local n any=0
	for n in $(seq $CLUSTER_SIZE -1 1); do
		cluster_node "$n"
		if cluster_alive "$n"; then
			any=1
			rmq_stop_node RMQCTL
		fi
	done
	[ $any = 1 ] || say "cluster: not running"
	ERL_EPMD_PORT=$CLUSTER_EPMD_PORT epmd -kill >/dev/null 2>&1 || true
}

cluster_status() {
	local n rc=0 running
	for n in $(seq 1 $CLUSTER_SIZE); do
		cluster_node "$n"
		if cluster_alive "$n" && running=$(cluster_eval 'length(rabbit_nodes:all_running()).'); then
			echo "node $n:     running  $RMQ_NODE, amqp port $RMQ_PORT, sees $running running node(s)"
		else
			echo "node $n:     stopped  $RMQ_NODE, amqp port $RMQ_PORT"
			rc=1
		fi
	done
	echo "state:      $STATE/cluster"
	return $rc
}

cluster_env() {
	local n pw urls=()
	pw=$(read_secret "$STATE/cluster/password") ||
		say "no password in $STATE/cluster/password (cluster not started yet, or not yours to read)"
	for n in $(seq 1 $CLUSTER_SIZE); do
		cluster_node "$n"
		urls+=("amqp://$RMQ_USER${pw:+:$pw}@localhost:$RMQ_PORT/$RMQ_VHOST")
		echo "export SVCCOMM_CLUSTER_URL_$n=${urls[-1]}"
		echo "export SVCCOMM_CLUSTER_RABBITMQCTL_$n=$(printf '%q' "$(quote_cmd "${RMQCTL[@]}")")"
	done
	echo "export SVCCOMM_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")"
}

cluster_kill_node() {
	local n=$1 pid
	cluster_node "$n"
	cluster_alive "$n" || die "cluster: node $n ($RMQ_NODE) is not running"
	pid=$(cat "$RDIR/pid")
	say "cluster: kill -9 $RMQ_NODE (pid $pid)"
	kill -9 "$pid"
	while kill -0 "$pid" 2>/dev/null; do
		sleep 0.1
	done
}

cluster_start_node() {
	local n=$1 want=0 k deadline
	cluster_node "$n"
	START_TIMEOUT=${SVCCOMM_SERVERS_TIMEOUT:-300}
	cluster_start_nodes "$n"
	# Back in the cluster: the node sees every node whose VM runs.
	for k in $(seq 1 $CLUSTER_SIZE); do
		if cluster_alive "$k"; then want=$((want + 1)); fi
	done
	cluster_node "$n"
	deadline=$((SECONDS + START_TIMEOUT))
	until [ "$(cluster_eval 'length(rabbit_nodes:all_running()).')" = "$want" ]; do
		[ $SECONDS -lt $deadline ] || die "cluster: $RMQ_NODE did not rejoin after ${START_TIMEOUT}s"
		sleep 0.5
	done
	say "cluster: $RMQ_NODE is back ($want node(s) running)"
}

cmd_cluster() {
	local what=${1:-}
	case "$what" in
	start | stop | kill-node | start-node)
		check_tools
		resolve_state
		mkdir -p "$STATE/cluster"
		exec 9>"$STATE/cluster/.lock"
		flock 9
		;;
	status | env) peek_state ;;
	*)
		usage >&2
		exit 2
		;;
	esac
	case "$what" in
	start) cluster_start ;;
	stop) cluster_stop ;;
	status) cluster_status ;;
	env) cluster_env ;;
	kill-node | start-node)
		[ -n "${2:-}" ] || die "cluster $what: which node (1..$CLUSTER_SIZE)?"
		"cluster_${what//-/_}" "$2"
		;;
	esac
}

usage() {
	sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
reset) cmd_reset ;;
pg-standby)
	shift
	cmd_pg_standby "$@"
	;;
cluster)
	shift
	cmd_cluster "$@"
	;;
-h | --help | help)
	usage
	exit 0
	;;
*)
	usage >&2
	exit 2
	;;
esac
