import CSystemd
import Daemon
import Datapath
import Logging
import ServiceLifecycle

/// The control API, the metrics listener (with `prometheus-serve-addr`) and the systemd
/// notifier, in that order, for the end of the service list: they read what the services
/// before them maintain, and stop before them.
public enum ControlServices {
    /// Stops a second masqd before it starts over a running one, which it would leave without
    /// its control socket (each removes its socket file when it exits): unless systemd passes
    /// the socket (read as `ControlSocket.resolve` reads it, LISTEN_PID included, and left for
    /// it), nothing may be answering at `socket-path` yet.
    public static func checkSocketPath(_ config: DaemonConfig) throws {
        guard sd_listen_fds(0) <= 0, ControlSocket.isServing(config.socketPath) else { return }
        throw ControlSocketError("socket-path \(config.socketPath): another masqd is serving there; stop it first, or give this one another socket-path")
    }

    public static func make(datapath: Datapath, status: DaemonStatus, events: EventHub, config: DaemonConfig,
                            logger: Logger) throws -> [ServiceGroupConfiguration.ServiceConfiguration] {
        let serving = ServingState()
        let handlers = APIHandlers(datapath: datapath, status: status, config: config, lifetimes: config.conntrackLifetimes,
                                   events: events)
        let api = APIServer(socket: try ControlSocket.resolve(path: config.socketPath, group: config.socketGroup),
                            router: APIRouter(handlers: handlers), serving: serving,
                            ready: { status.snapshot.ready }, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: api)]
        if let address = config.prometheusServeAddr {
            // Serves at once: a scrape or probe during the start sees masq_up 0 and a 503.
            services.append(.init(service: APIServer(socket: .tcp(address), router: APIRouter(handlers: handlers, scope: .metrics),
                                                     serving: ServingState(), logger: logger)))
        }
        services.append(.init(service: SystemdNotifier(status: status, serving: serving, logger: logger)))
        return services
    }
}
