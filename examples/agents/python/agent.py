"""Example Warden agent in Python: a TCP service.

monitor: a TCP connect to host:port (through the host's tcp-probe import).
start:   runs the `start` program (which must start the service in the background and return),
         then waits until the port answers.
stop:    runs the `stop` program, then waits until the port is closed.
watch:   after a start, and in every monitor that finds the service up, the agent names the
         service's processes (`own-processes`: what the start program left running in the
         resource's cgroup), so the engine monitors the moment one of them exits (0.2.0).

Build: componentize-py -d ../../../wit -w resource-agent componentize -p . agent -o example-python.wasm
(`cargo xtask plugins` does this and embeds warden.toml).
"""
import wit_world
from wit_world.exports import agent as agent_types
from wit_world.imports import host, types
from componentize_py_types import Err


def params(ctx: types.Context) -> dict:
    return dict(ctx.params)


def require(p: dict, name: str) -> str:
    if not p.get(name):
        raise Err(types.AgentError_InvalidConfig(f"parameter `{name}` is required"))
    return p[name]


def port_of(p: dict) -> int:
    try:
        return int(require(p, "port"))
    except ValueError:
        raise Err(types.AgentError_InvalidConfig(f"parameter `port` must be a number, got `{p['port']}`"))


def is_up(p: dict) -> bool:
    return host.tcp_probe(p.get("host", "127.0.0.1"), port_of(p), 1000)


def run(p: dict, which: str) -> None:
    program = require(p, which)
    args = p.get(which + "_args", "").split()
    out = host.exec(program, args, host.ExecOptions(env=[], stdin=None, timeout_ms=None, cwd=None))
    if out.exit_code != 0:
        status = "timed out" if out.timed_out else f"exit {out.exit_code}"
        raise Err(types.AgentError_Failed(f"{which} program {program} failed ({status}): {out.stderr.strip()}"))


def watch_own_processes() -> None:
    """Name the service's processes; a refusal (no cgroup here) only means interval monitoring."""
    try:
        host.watch([host.WatchTarget_OwnProcesses()])
    except Err as e:
        host.log(host.Level.DEBUG, f"no process watch ({e.value}); failures are seen at the next monitor")


def wait_for(p: dict, up: bool) -> bool:
    waited = 0
    limit = int(p.get("wait_ms", "10000"))
    while waited <= limit:
        if is_up(p) == up:
            return True
        host.sleep(100)
        waited += 100
    return False


class Agent(wit_world.exports.Agent):
    def metadata(self) -> agent_types.AgentMetadata:
        P = types.Parameter
        return agent_types.AgentMetadata(
            name="example-python",
            version="0.2.0",
            description="A TCP service: up when host:port accepts connections (example agent in Python)",
            parameters=[
                P("port", "TCP port the service listens on", True, None),
                P("host", "Address to probe", False, "127.0.0.1"),
                P("start", "Absolute path of a program that starts the service in the background", True, None),
                P("start_args", "Arguments for `start`, separated by spaces", False, ""),
                P("stop", "Absolute path of a program that stops the service", True, None),
                P("stop_args", "Arguments for `stop`, separated by spaces", False, ""),
                P("wait_ms", "How long start/stop wait for the port to open/close", False, "10000"),
            ],
            timeouts=types.Timeouts(start_ms=30000, stop_ms=30000, monitor_ms=5000, recover_ms=60000, validate_ms=5000),
            monitor_interval_ms=5000,
            local_recovery=True,
        )

    def validate(self, ctx: types.Context) -> None:
        p = params(ctx)
        port_of(p)
        for which in ("start", "stop"):
            if host.stat(require(p, which)) is None:
                raise Err(types.AgentError_NotInstalled(f"{which} program {p[which]} does not exist"))

    def start(self, ctx: types.Context) -> None:
        p = params(ctx)
        if is_up(p):
            return
        run(p, "start")
        if not wait_for(p, True):
            raise Err(types.AgentError_Failed(f"port {port_of(p)} did not open after start"))
        host.log(host.Level.INFO, f"service up on port {port_of(p)}")
        watch_own_processes()

    def stop(self, ctx: types.Context) -> None:
        p = params(ctx)
        if not is_up(p):
            return
        run(p, "stop")
        if not wait_for(p, False):
            raise Err(types.AgentError_Failed(f"port {port_of(p)} still open after stop"))

    def monitor(self, ctx: types.Context) -> types.Health:
        if not is_up(params(ctx)):
            return types.Health_Stopped()
        watch_own_processes()  # also after an engine restart: its first monitor is the probe
        return types.Health_Running()

    def recover(self, ctx: types.Context) -> None:
        self.stop(ctx)
        self.start(ctx)
