"""Tests run with 8 CPU devices so that sharded code is checked against one device."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
