"""The web portal: server-rendered pages over the job catalog, for owners and the receiving site.

Jinja2 templates (autoescaped), one CSS file, no script and no build step;
mounted by ``service.create_app`` under ``/portal`` on the same Starlette app,
port and TLS as the REST API.  Every change goes through the catalog's public
API with the REST API's own bodies, so both refuse the same things in the
same words.

    routes.py    the pages and the route table (its docstring lists every URL);
                 ``routes.routes()`` is what ``service.create_app`` mounts
    wizard.py    the create-job wizard: drives, contact, job name, region, return shipping
    web.py       plumbing: form parsing, audience check, CSRF, rendering, error pages, headers
    sessions.py  in-memory sessions behind an HttpOnly SameSite=Strict cookie; CSRF design
    tokens.py    publish settings upload -> token, and the receiving site's site tokens
    templates/   the pages;  static/portal.css

Who signs in with what:

- a subscription's owner pastes a bearer token (``pipeline jobs token
  --publish-settings FILE``) or uploads the ``.publishsettings`` file itself
  (read in memory; the key signs one token and is dropped, never stored);
- the receiving site pastes a site token (``pipeline service site-token --data
  DIR``, HMAC-signed with ``DATA/site.key``, 0600): it sees every subscription's
  jobs and marks drives Received or NeverReceived, and never sees a recovery
  password.

Recovery passwords appear on one page only, the owner's keys page
(``/portal/jobs/{rg}/{name}/keys``); the wizard keeps the uploaded drive list in
server memory and never writes it back into a page.
"""

# Nothing is imported here: web and wizard import this package's modules
# (sessions, tokens), so re-exporting routes here would close a cycle through it.
