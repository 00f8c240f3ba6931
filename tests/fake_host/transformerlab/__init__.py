"""A fake of the plugin-era Transformer Lab SDK: only the surface `plugin_sdk.backends.host.HostBackend` calls, recording
every call, one job record and a stop flag (`transformerlab._state`). Put `tests/fake_host` on sys.path to use it."""
