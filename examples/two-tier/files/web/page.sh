#!/bin/sh
# The page: its text comes from db, Redis at 10.6.0.2, which web may reach.
# Its password is a secret, readable by www-data only, in web's memory.
export REDISCLI_AUTH="$(cat /run/credentials/microvm/redis-password)"
greeting=$(redis-cli --no-auth-warning -h 10.6.0.2 get greeting)
printf 'Content-Type: text/html\r\n\r\n'
printf '<h1>two-tier</h1>\n<p>db says: %s</p>\n' "$greeting"
