"""Flower as the stack runs it: Flower's own application, every route behind its password, every queue on its Broker page.

`athena-inference flower` execs `python -m athena_inference.workers.ops.flower_app`.
It builds Flower the way `celery flower` does (the same option, environment and
logging steps, taken from `flower.command`), with two changes made per request,
so nothing of Flower is copied or patched:

- Flower 2.2 guards its pages and API methods with `web.authenticated`, but
  serves `/metrics` to anyone, and answers OPTIONS and wrong methods before
  any check. Here every handler asks for the password first, in `prepare`,
  which tornado runs before any method.
- Flower's Broker page lists only the queues of the workers it has heard from
  (all configured ones only while it knows no worker at all), so right after a
  start it shows whichever workers answered first. Here it lists every
  configured queue, plus any other a worker consumes.

The login comes from FLOWER_BASIC_AUTH, which Flower itself reads; `launch.run_flower`
sets it, so no password is on this process's command line.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import functools
import hmac
import signal
import sys
from typing import Optional

from flower import command
from flower.app import Flower
from flower.urls import settings as flower_settings
from flower.views import BaseHandler
from flower.views.monitor import Healthcheck
from tornado.httputil import HTTPServerRequest
from tornado.options import options
from tornado.web import RequestHandler

from athena_inference.config.celery import app as celery_app

# A container's health probe must not need the secret, and the answer is a
# constant "OK": it tells a visitor only that something listens, which the open
# port already tells.
OPEN = (Healthcheck,)


def presents(request: HTTPServerRequest, logins: list[str]) -> bool:
    """Whether the request carries one of the `user:password` logins, as HTTP basic auth."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    # Constant time, so the answer's timing says nothing of how much was right.
    return any(hmac.compare_digest(given, login.encode()) for login in logins)


class PasswordFirst(RequestHandler):
    """Answers 401 before the handler runs, unless the request carries the login."""

    def prepare(self):  # type: ignore[override]
        logins = self.application.options.basic_auth
        # No login configured means ATHENA_FLOWER_UNAUTHENTICATED=true: Flower's own rules apply.
        if logins and not presents(self.request, logins):
            # Flower's pages answer the same way; its API handlers would drop the
            # WWW-Authenticate header, which a browser needs to ask for the login.
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
            self.finish("Access denied")
            return None
        return super().prepare()


class EveryQueue(BaseHandler):
    """The Broker page and /api/queues/length count every configured queue, not only those of workers heard from."""

    def get_active_queue_names(self) -> list[str]:
        configured = {queue.name for queue in self.capp.conf.task_queues or [] if queue.name}
        # Flower's own method would add its "celery" default queue while it knows
        # no worker; nothing is routed there, so it is left out.
        consumed = {queue["name"] for info in self.application.workers.values() for queue in info.get("active_queues", [])}
        return sorted(configured | consumed)


@functools.cache
def ours(handler: type[RequestHandler]) -> type[RequestHandler]:
    """The handler class as this stack serves it: made once per Flower handler."""
    if issubclass(handler, OPEN):
        return handler
    bases = (PasswordFirst, EveryQueue, handler) if issubclass(handler, BaseHandler) else (PasswordFirst, handler)
    return type(handler.__name__, bases, {})


class AthenaFlower(Flower):
    def get_handler_delegate(self, request, target_class, *args, **kwargs):
        # Tornado routes every request, the catch-all 404 and static files
        # included, through here: no route can be missed.
        return super().get_handler_delegate(request, ours(target_class), *args, **kwargs)


def main(argv: Optional[list[str]] = None) -> None:
    """What `celery flower` does, with AthenaFlower for Flower and our Celery app."""
    argv = sys.argv[1:] if argv is None else argv
    command.apply_env_options()
    command.apply_options(sys.argv[0], argv)
    command.extract_settings()
    command.setup_logging()
    flower = AthenaFlower(capp=celery_app, options=options, **flower_settings)
    atexit.register(flower.stop)
    signal.signal(signal.SIGTERM, command.sigterm_handler)
    port = flower.start_http_server()
    command.print_banner(celery_app, "ssl_options" in flower_settings, port)
    try:
        flower.start()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
