"""Adapters to the machine: systemd units, GPUs, the node probe, NixOS generations, sd_notify."""
