#!/bin/sh
# The page: its text comes from db, Redis at 10.6.0.2, which web may reach.
greeting=$(redis-cli -h 10.6.0.2 get greeting)
printf 'Content-Type: text/html\r\n\r\n'
printf '<h1>two-tier</h1>\n<p>db says: %s</p>\n' "$greeting"
