"""The members' etcd: membership at start, raft leadership while running."""
