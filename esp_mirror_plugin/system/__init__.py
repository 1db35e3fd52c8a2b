"""Where esp-mirror touches the machine: the one command runner, the read-only discovery of disks
and arrays, the target root as hooks see it, atomic file writes, and the lock.
"""
