"""SWIM + Lifeguard membership with encrypted health digests (memberlist is the reference)."""
