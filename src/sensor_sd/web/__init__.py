"""The plumbing of the SD's own HTTP server (the handlers are `sensor_sd.server`).

`config` parses and validates the exporter-toolkit web config (WEB_CONFIG_FILE)
once (config.load carries the result in `Settings.web_config`), `tls` builds the
server's SSLContext, `auth` adds basic auth, the client-certificate SAN check and
the extra headers to the aiohttp app, `connections` caps the connections and
bounds what each may hold. Only `auth` and `connections` import aiohttp's server,
and only `run` imports them: `once` and `check` stay light (tests/test_cold_start.py).
"""
