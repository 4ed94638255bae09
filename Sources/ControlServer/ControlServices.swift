@preconcurrency import Glibc
import CSystemd
import Daemon
import Datapath
import Logging
import NIOCore
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

    /// Stops masqd before it attaches anything when it could not serve `prometheus-serve-addr`
    /// (an address the node does not have, a port another process listens on): found only
    /// once the datapath was attached, that failed the start with the programs left in place.
    /// The listener itself is bound later, with the API; this binds and closes a probe socket.
    public static func checkMetricsAddress(_ config: DaemonConfig) throws {
        guard let address = config.prometheusServeAddr else { return }
        var failure: Int32 = 0
        for host in address.bindAddresses {
            let target = try SocketAddress(ipAddress: host, port: address.port)
            let fd = socket(target.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                failure = errno
                continue
            }
            defer { close(fd) }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if target.withSockAddr({ bind(fd, $0, socklen_t($1)) }) == 0 && listen(fd, 1) == 0 { return }
            failure = errno
        }
        throw ControlSocketError("prometheus-serve-addr \(address): cannot listen there: \(String(cString: strerror(failure)))")
    }

    public static func make(datapath: Datapath, status: DaemonStatus, events: EventHub, config: DaemonConfig,
                            logger: Logger) throws -> [ServiceGroupConfiguration.ServiceConfiguration] {
        let serving = ServingState()
        let socket = try ControlSocket.resolve(path: config.socketPath, group: config.socketGroup)
        var handlers = APIHandlers(datapath: datapath, status: status, config: config, lifetimes: config.conntrackLifetimes,
                                   events: events)
        if case .inherited(_, let path?) = socket { handlers.activatedSocketPath = path }
        let api = APIServer(socket: socket,
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
