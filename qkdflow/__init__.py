"""qkdflow: streaming decoy-state BB84 QKD blocks for 5G fronthaul."""
