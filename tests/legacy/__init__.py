"""The legacy node's software under an emulated Core 2 Duo (qemu-user), built as it ships."""
