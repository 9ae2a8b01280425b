"""The SD's own web face as configured by an exporter-toolkit web config (WEB_CONFIG_FILE).

`config` parses and validates the file once (config.load carries the result
in `Settings.web_config`), `tls` builds the server's SSLContext, `auth` adds
basic auth, the client-certificate SAN check and the extra headers to the
aiohttp app. Only `auth` imports aiohttp's server, and only `run` imports it:
`once` and `check` stay light (tests/test_cold_start.py).
"""
