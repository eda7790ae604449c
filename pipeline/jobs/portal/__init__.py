"""The web portal: server-rendered pages over the job catalog, for owners and the receiving site.

Jinja2 templates (autoescaped), one CSS file, no script and no build step;
mounted by ``service.create_app`` under ``/portal`` on the same Starlette app,
port and TLS as the REST API.  Every change goes through the catalog's public
API with the REST API's own bodies, so both refuse the same things in the
same words.

    routes.py    sign-in/out, the owner's pages and the route table (its docstring lists
                 every URL); ``routes.routes()`` is what ``service.create_app`` mounts
    site.py      the receiving site's pages: mark (and undo), return, close
    wizard.py    the create-job wizard: drives, contact, job name, region, return shipping
    lifecycle.py the timeline and who acts next; which actions the rules allow now, and
                 the PATCH bodies that do them
    forms.py     field labels, checks that name every field at once, service messages
                 in plain words (never a JSON path)
    countries.py the ISO 3166 country list (the one list every country picker offers)
    copylogs.py  copy logs: per-drive error summary, view and download
    web.py       plumbing: form parsing, audience check, CSRF, POST-redirect-GET,
                 rendering, error pages, headers
    sessions.py  in-memory sessions behind an HttpOnly SameSite=Strict cookie; CSRF design
    tokens.py    publish settings upload -> token, and the receiving site's site tokens
    templates/   the pages;  static/portal.css

Who signs in with what:

- a subscription's owner pastes a bearer token (``pipeline jobs token
  --publish-settings FILE``) or uploads the ``.publishsettings`` file itself
  (read in memory; the key signs one token and is dropped, never stored);
- the receiving site pastes a site token (``pipeline service site-token --data
  DIR``, HMAC-signed with ``DATA/site.key``, 0600): it sees every subscription's
  jobs, marks drives Received or NeverReceived (and undoes a wrong mark),
  records the return package and closes jobs, and never sees a recovery
  password.  Its changes are sent with the site's role (``Role.SITE``), an owner's
  with the customer's: each session can do only its own steps.

Recovery passwords appear on one page only, the owner's keys page
(``/portal/jobs/{rg}/{name}/keys``); the wizard keeps the uploaded drive list in
server memory and never writes it back into a page.
"""

# Nothing is imported here: web and wizard import this package's modules
# (sessions, tokens), so re-exporting routes here would close a cycle through it.
