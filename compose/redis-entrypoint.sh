#!/bin/sh
# Starts Redis with its password from a private config file: given as
# --requirepass it would sit in redis-server's arguments, which `ps` and
# /proc/*/cmdline show to anyone on the host. Only shell builtins (printf,
# case) see the password as an argument; tr and sed read it on stdin.
set -eu

# Refuse the values .env.example ships with, and the usual stand-ins, so a copy
# of .env.example that nobody edited never guards a reachable Redis.
lowered=$(printf '%s' "${REDIS_PASSWORD:-}" | tr '[:upper:]' '[:lower:]')
case "$lowered" in
    "" | change-me | changeme | change_me | password | secret | redis | example | placeholder | xxx | todo)
        echo "redis-entrypoint: REDIS_PASSWORD is empty or a placeholder; set a real one in compose/.env (e.g. openssl rand -hex 32)" >&2
        exit 1 ;;
esac

# Outside /data on purpose: the password stays off the Redis volume and its backups.
config=${REDIS_CONFIG_FILE:-/tmp/redis.conf}
# Redis reads a double-quoted value with backslash escapes; escaping \ and "
# keeps any password one argument.
quoted=$(printf '%s' "$REDIS_PASSWORD" | sed 's/[\\"]/\\&/g')

# Private from the first byte: umask 077 has it created 0600, and rm plus
# noclobber has the shell create it afresh, never write through a file or
# link left in its place.
umask 077
rm -f "$config"
set -C
{
    printf 'requirepass "%s"\n' "$quoted"
    # Append-only file, fsync every second: queued tasks and results survive a restart.
    printf 'appendonly yes\n'
    printf 'appendfsync everysec\n'
} > "$config"

exec redis-server "$config"
