"""The local systems' HTTP API: Norsk helsenett's Meldingstjener (EDI 2.0) REST API, version 2.

An EPJ that already talks to NHN's service can talk to komut by changing its base URL and token.

- `edi`: the routes, mounted on the gateway's aiohttp app (`gateway.web.WEB_MODULES`).
- `mapping`: pure functions between the spec's JSON and komut's records.
- `auth`: static bearer tokens from the configuration and JWT access tokens checked against an
  issuer's JWKS; each client is bound to the HER-ids it may act for.
- `ratelimit`: a token bucket per client.
- `mailbox`: the "api" transport; a local system's unread messages, fetched with GET /Messages.
- `ids`: the spec's message ids (UUIDs) to and from store ids.
- `settings`: the `[api]` section of the gateway configuration.
"""
