"""The GraphiQL page of development: Strawberry's own, opening with an `Authorization`
header template and a first query that says where the access token comes from.

The page loads React and GraphiQL from unpkg.com (a CDN, with subresource integrity);
`weflux.api.security` hashes its inline script into the page's Content-Security-Policy.
"""

from __future__ import annotations

import functools
import json
import re

from strawberry.http.ides import get_graphql_ide_html

# What the Headers tab holds on a first visit (GraphiQL keeps the user's own afterwards).
HEADERS_TEMPLATE = '{\n  "Authorization": "Bearer <accessToken from POST /auth/login>"\n}'

WELCOME = """# Weflux GraphQL (development)
#
# Every operation needs an access token. Get one with POST /auth/login:
#
#   curl -s http://127.0.0.1:8000/auth/login -H 'Content-Type: application/json' \\
#     -d '{"email": "…", "password": "…"}'
#
# (`make run` prints the demo logins), then put the answer's accessToken in the
# Headers tab below, in place of <accessToken from POST /auth/login>:
#
#   {"Authorization": "Bearer eyJ…"}
#
# The same header authenticates subscriptions (GraphiQL sends it in the socket's
# connection_init). A token expires (accessTokenExpiresAt): POST /auth/refresh with
# the refreshToken gives a new one.
#
# Every type and field is described in the Docs pane (the book icon, top left);
# each query and mutation says which roles may call it.
#
# This page loads GraphiQL from unpkg.com (a CDN): it needs internet access.

query Viewer {
  viewer {
    role
    user { name email }
    organization { name }
  }
}
"""

_EXAMPLE_QUERY = re.compile(r"const EXAMPLE_QUERY = `.*?`;", re.DOTALL)
_HEADERS_PROP = "          headers: headers,\n"


@functools.cache
def graphiql_page() -> str:
    """Strawberry's GraphiQL page with our first query and the header template."""
    html = get_graphql_ide_html("graphiql")
    if len(_EXAMPLE_QUERY.findall(html)) != 1 or html.count(_HEADERS_PROP) != 1:
        raise RuntimeError("Strawberry's GraphiQL page changed: adapt weflux/gql/ide.py")
    # JSON strings are JavaScript string literals: nothing in them can end the script.
    welcome = json.dumps(WELCOME).replace("</", "<\\/")
    headers = json.dumps(HEADERS_TEMPLATE)
    html = _EXAMPLE_QUERY.sub(
        lambda _: f"const EXAMPLE_QUERY = {welcome};\n      const DEFAULT_HEADERS = {headers};",
        html,
    )
    return html.replace(
        _HEADERS_PROP, _HEADERS_PROP + "          defaultHeaders: DEFAULT_HEADERS,\n"
    )
