"""The planners, one module per hook and the pieces they share: each turns (request, profile,
layout, target) into frozen steps, and none of them runs anything.

``partition`` (pre_partition), ``raid``, ``fat``, ``fstab`` and ``periodic`` (post_format),
``initramfs`` (initramfs_config), ``bootloader`` and ``bootentries`` (bootloader).
"""
