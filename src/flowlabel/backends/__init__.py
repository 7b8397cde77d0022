"""What the daemon does with flow events: mark them (ebpf), report them (firefly), count them (prometheus)."""
