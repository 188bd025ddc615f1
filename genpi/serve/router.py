"""The router: OpenAI-compatible, on 127.0.0.1, holding the API key, in front of one shared engine (and one
engine of its own for each tenant in ``serve.merged``).

- Every call needs ``Authorization: Bearer <key>`` (the key comes from ``serve.api_key_env``; compared in
  constant time, never logged). Only ``/health`` is open.
- ``POST /v1/chat/completions`` and ``/v1/completions``: the request's ``model`` is a prompt's name. The
  router rewrites it to the engine's name for that prompt's promoted version and forwards the call (streamed
  replies stream through). An unknown name gets a 404 listing the served names.
- ``GET /v1/models``: the served prompt names. ``GET /genpi/status``: routes, versions, refusals.
  ``POST /genpi/swap``: look for newly promoted versions now (the poller also does, every ``poll_s``).

A swap never drops a request: the new version is checked (its bytes against its training record, its base
against the engine's) and loaded under a new engine name, then the route switches, then the router waits
for the old version's requests in flight to finish and unloads it. If the check or the load fails, the old
version keeps serving and ``/genpi/status`` says why. An engine that dies is started again (checked every
``ENGINE_CHECK_S``) with the tenants it served (``restarts`` in the status).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from genpi.serve.engines import Engine, MergedVllmEngine
from genpi.serve.tenants import Tenant, check_tenant, load_tenant, promoted_names
from schemas.config import ServeConfig

log = logging.getLogger("genpi.serve")
ENGINE_CHECK_S = 2.0  # seconds between checks that every engine is still running


def _code(engine: Engine) -> int | None:
    return engine.proc.returncode if engine.proc is not None else None


def _error(status: int, message: str, kind: str, **extra) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, **extra}}, status_code=status)


@dataclass
class Served:
    tenant: Tenant
    model_id: str
    engine: Engine


@dataclass
class RouterState:
    """Routes by prompt name, requests in flight by engine model id, and what was refused and why."""

    routes: dict[str, Served] = field(default_factory=dict)
    in_flight: Counter = field(default_factory=Counter)
    refused: dict[str, str] = field(default_factory=dict)
    swaps: int = 0
    restarts: int = 0


class Router:
    def __init__(self, cfg: ServeConfig, runs_dir: Path, engine: Engine, base_model: str, api_key: str) -> None:
        if not api_key:
            raise ValueError(f"serve: set {cfg.api_key_env} to the key clients must send; the router never runs open")
        self.cfg, self.runs_dir, self.engine, self.base_model = cfg, Path(runs_dir), engine, base_model
        self._key = api_key.encode()
        self.state = RouterState()
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    # --- tenants ------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.cfg.prompts) or promoted_names(self.runs_dir)

    def wanted(self) -> list[Tenant]:
        """Every served name's promoted version that passes its checks; refusals recorded with their reason."""
        out = []
        for name in self.names():
            tenant = load_tenant(self.runs_dir, name)
            if tenant is None:
                self.state.refused[name] = "no promoted version"
                continue
            try:
                check_tenant(tenant, self.base_model)
            except ValueError as exc:
                self.state.refused[tenant.engine_name] = str(exc)
                log.warning("not serving %s: %s", tenant.engine_name, exc)
                continue
            out.append(tenant)
        return out

    def merged(self, tenant: Tenant) -> bool:
        """Served from merged weights on an engine of its own (vLLM only: transformers merges every tenant)."""
        return tenant.name in self.cfg.merged and self.engine.kind == "vllm"

    @staticmethod
    def launch(engine: Engine, tenants: list[Tenant]) -> dict[str, str]:
        """Start ``engine`` serving ``tenants`` (blocking: engines take a while); each tenant's model id on it.
        vLLM gets its adapters on the command line; transformers loads each tenant's merged weights once up."""
        engine.start(tenants if engine.kind == "vllm" else [])
        return {t.name: engine.add(t) if engine.kind == "transformers" else engine.model_id(t) for t in tenants}

    def own_engine(self, tenant: Tenant) -> Engine:
        """A started engine serving only ``tenant``'s merged weights (blocking: minutes on CPU)."""
        engine = MergedVllmEngine(self.cfg, self.base_model, self.engine.home, tenant)
        self.launch(engine, [tenant])
        return engine

    def engines(self) -> list[Engine]:
        return [self.engine, *(s.engine for s in self.state.routes.values() if s.engine is not self.engine)]

    def start(self) -> None:
        """Start the engine with every servable tenant (blocking: engines take a while)."""
        tenants = self.wanted()
        shared = [t for t in tenants if not self.merged(t)]
        model_ids = self.launch(self.engine, shared)
        for tenant in tenants:
            if self.merged(tenant):
                engine = self.own_engine(tenant)
                served = Served(tenant, engine.model_id(tenant), engine)
            else:
                served = Served(tenant, model_ids[tenant.name], self.engine)
            self.state.routes[tenant.name] = served
            log.info("serving %s as %s on the %s engine", tenant.name, tenant.engine_name, served.engine.kind)

    def stop(self) -> None:
        """Stop every engine, the tenants' own first."""
        for engine in reversed(self.engines()):
            engine.stop()

    async def refresh(self) -> list[str]:
        """Swap in every newly promoted version; returns what changed."""
        changed = []
        async with self._lock:  # one swap at a time
            for name in self.names():
                tenant = load_tenant(self.runs_dir, name)
                current = self.state.routes.get(name)
                if tenant is None or (current and current.tenant.version12 == tenant.version12):
                    continue
                if tenant.engine_name in self.state.refused:
                    continue  # refused before: the same bytes would be refused again
                if await self._swap(tenant, current):
                    changed.append(tenant.engine_name)
        return changed

    async def _swap(self, tenant: Tenant, old: Served | None) -> bool:
        try:
            await asyncio.to_thread(check_tenant, tenant, self.base_model)
            engine = await asyncio.to_thread(self.own_engine, tenant) if self.merged(tenant) else self.engine
            model_id = await asyncio.to_thread(engine.add, tenant)
        except (ValueError, RuntimeError, httpx.HTTPError) as exc:
            self.state.refused[tenant.engine_name] = str(exc)
            keeps = f"; {old.tenant.engine_name} keeps serving" if old else ""
            log.warning("swap to %s refused: %s%s", tenant.engine_name, exc, keeps)
            return False
        self.state.routes[tenant.name] = Served(tenant, model_id, engine)  # new requests go to the new version now
        self.state.refused.pop(tenant.name, None)  # "no promoted version" no longer holds
        self.state.swaps += 1
        log.info("%s now serves %s", tenant.name, tenant.engine_name)
        if old is not None:
            asyncio.get_running_loop().create_task(self._retire(old))
        return True

    async def _retire(self, old: Served) -> None:
        """Unload the old version once its requests in flight are done (or the drain time is up)."""
        waited = 0.0
        while self.state.in_flight[old.model_id] and waited < self.cfg.drain_timeout_s:
            await asyncio.sleep(0.1)
            waited += 0.1
        if self.state.in_flight[old.model_id]:
            log.warning(
                "%s: %d request(s) still running after %.0f s; unloading anyway",
                old.tenant.engine_name,
                self.state.in_flight[old.model_id],
                waited,
            )
        await asyncio.to_thread(old.engine.remove, old.tenant)  # an engine of its own stops
        log.info("unloaded %s", old.tenant.engine_name)

    async def revive(self) -> list[str]:
        """Start again every engine that died (a crash, the OOM killer), with the tenants it served; requests in
        the meantime get a 502 naming the engine. Returns the kinds restarted."""
        restarted = []
        async with self._lock:  # never beside a swap
            for engine in self.engines():
                if engine.alive():
                    continue
                tenants = [s.tenant for s in self.state.routes.values() if s.engine is engine]
                log.warning("%s engine is not running (exit code %s); starting it again", engine.kind, _code(engine))
                await asyncio.to_thread(self.launch, engine, tenants)
                self.state.restarts += 1
                restarted.append(engine.kind)
        return restarted

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_s)
            try:
                await self.refresh()
            except Exception:  # the poller must outlive any one bad promotion record
                log.exception("checking for promoted versions failed")

    async def watch_engines(self) -> None:
        """Every ENGINE_CHECK_S, whatever ``poll_s`` is: a dead engine must not wait for the next promotion check."""
        while True:
            await asyncio.sleep(ENGINE_CHECK_S)
            try:
                await self.revive()
            except Exception:  # a failed restart is tried again on the next check
                log.exception("restarting an engine failed")

    # --- HTTP -----------------------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key)

    async def forward(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the request body is not JSON", "invalid_request_error")
        name = body.get("model") if isinstance(body, dict) else None
        served = self.state.routes.get(name) if isinstance(name, str) else None
        if served is None:
            names = sorted(self.state.routes)
            return _error(
                404, f"unknown model {name!r}; served: {', '.join(names) or 'none'}", "model_not_found", served=names
            )
        body["model"] = served.model_id
        model_id = served.model_id
        self.state.in_flight[model_id] += 1
        assert self._client is not None
        upstream = self._client.build_request(
            "POST", served.engine.url + request.url.path, json=body, headers=served.engine.headers, timeout=None
        )
        try:
            reply = await self._client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            self.state.in_flight[model_id] -= 1
            return _error(502, f"the engine did not answer: {type(exc).__name__}", "engine_error")

        async def relay():
            try:
                async for chunk in reply.aiter_bytes():  # decoded: the client is not told of any engine encoding
                    yield chunk
            finally:
                await reply.aclose()
                self.state.in_flight[model_id] -= 1

        headers = {k: v for k, v in reply.headers.items() if k.lower() in ("content-type", "cache-control")}
        return StreamingResponse(relay(), status_code=reply.status_code, headers=headers)

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "owned_by": "genpi"} for n in sorted(self.state.routes)],
            }
        )

    async def status(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        routes = {
            n: {
                "version": s.tenant.version12,
                "engine_name": s.tenant.engine_name,
                "engine": s.engine.kind,
                "promoted_at": s.tenant.promoted_at,
                "in_flight": self.state.in_flight[s.model_id],
            }
            for n, s in sorted(self.state.routes.items())
        }
        return JSONResponse(
            {
                "engine": self.engine.kind,
                "engine_alive": all(e.alive() for e in self.engines()),
                "routes": routes,
                "refused": self.state.refused,
                "swaps": self.state.swaps,
                "restarts": self.state.restarts,
            }
        )

    async def swap(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        return JSONResponse({"swapped": await self.refresh()})

    async def health(self, request: Request) -> Response:
        alive = all(e.alive() for e in self.engines())
        return JSONResponse({"ok": alive}, status_code=200 if alive else 503)

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app):
            self._client = httpx.AsyncClient()
            loop = asyncio.get_running_loop()
            background = [loop.create_task(self.poll()), loop.create_task(self.watch_engines())]
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                await self._client.aclose()

        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.forward, methods=["POST"]),
                Route("/v1/completions", self.forward, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/genpi/status", self.status, methods=["GET"]),
                Route("/genpi/swap", self.swap, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
            ],
            lifespan=lifespan,
        )
