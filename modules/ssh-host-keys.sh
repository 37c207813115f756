#!/usr/bin/env bash
# Keeps a RAM-rooted host's SSH host keys on a persistent volume (cairn.appliance.sshHostKeyVolume):
# a key the volume holds replaces the one made at this boot, so the host keeps its identity
# across boots; a key the volume lacks is saved there. Each file is written under a temporary
# name and renamed into place, so a crash leaves the old file or the new one, never half of one.
# Usage: cairn-ssh-host-keys DIR KEY...   (KEY: a private key path of services.openssh.hostKeys)
set -euo pipefail

dir=$1
shift
install -d -m 700 "$dir"

for key in "$@"; do
  kept="$dir/$(basename "$key")"
  if [ -s "$kept" ]; then
    if cmp -s "$kept" "$key"; then
      continue
    fi
    install -D -m 600 "$kept" "$key.tmp"
    # The public half is derived from the kept private key, so the two always agree.
    if ! ssh-keygen -y -f "$key.tmp" > "$key.pub.tmp" 2>/dev/null; then
      rm -f "$key.tmp" "$key.pub.tmp"
      echo "$kept: not a private key; $key stays as it is" >&2
      continue
    fi
    chmod 644 "$key.pub.tmp"
    mv -f "$key.tmp" "$key"
    mv -f "$key.pub.tmp" "$key.pub"
    echo "$key: the key kept in $dir"
  elif [ -s "$key" ]; then
    install -m 600 "$key" "$kept.tmp"
    mv -f "$kept.tmp" "$kept"
    echo "$key: saved to $dir"
  else
    echo "$key: no such key, here or in $dir" >&2
  fi
done
