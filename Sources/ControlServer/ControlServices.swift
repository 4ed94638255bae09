import Daemon
import Datapath
import Logging
import ServiceLifecycle

/// The control API and the systemd notifier, in that order, for the end of the service list:
/// they read what the services before them maintain, and stop before them.
public enum ControlServices {
    public static func make(datapath: Datapath, status: DaemonStatus, config: DaemonConfig,
                            logger: Logger) throws -> [ServiceGroupConfiguration.ServiceConfiguration] {
        let serving = ServingState()
        let handlers = APIHandlers(datapath: datapath, status: status, config: config, lifetimes: config.conntrackLifetimes)
        let api = APIServer(socket: try ControlSocket.resolve(path: config.socketPath, group: config.socketGroup),
                            router: APIRouter(handlers: handlers), serving: serving, logger: logger)
        let notifier = SystemdNotifier(status: status, serving: serving, logger: logger)
        return [.init(service: api), .init(service: notifier)]
    }
}
