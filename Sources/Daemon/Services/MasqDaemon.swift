import Datapath
import Logging
import Netlink
import ServiceLifecycle

/// masqd's services in dependency order: a service may rely on those listed before it, and
/// graceful shutdown (SIGTERM, SIGINT) stops them in reverse.
public enum MasqDaemon {
    /// The services that serve what the daemon maintains (the control API, the systemd
    /// notifier), made once the datapath is loaded; they go last, so they stop first.
    public typealias ControlServices = (Datapath, DaemonStatus, EventHub) throws -> [ServiceGroupConfiguration.ServiceConfiguration]

    /// `reloadConfig` re-reads the config file with the command line's flags (SIGHUP).
    public static func run(config: DaemonConfig, objectBytes: [UInt8]?, logger: Logger,
                           reloadConfig: @escaping @Sendable () throws(ConfigErrors) -> DaemonConfig,
                           control: ControlServices) async throws {
        // One daemon per pinned state: a second one stops here, before it touches a map.
        let datapath = try Datapath(config: config, objectBytes: objectBytes, exclusive: true, logger: logger)
        let status = DaemonStatus()
        let events = EventHub()
        let (changes, changeSink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)

        var agent = IPMasqAgentWatcher(
            path: config.ipMasqAgentConfigPath, enabledAtStart: config.enableIPMasqAgent,
            ipv6AtStart: config.enableIPv6Masquerade, status: status, changes: changeSink, logger: logger)
        agent.loadAtStart(pinned: try await datapath.nonMasqueradeCIDRs())

        let network = try NetworkSnapshot.read()
        let inputs = ReconcileInputs(config: config, network: network, nonMasquerade: agent.initial)
        let reconciler = ReconcilerService(
            datapath: datapath, status: status, initial: inputs, pinned: try await datapath.readView().devices,
            changes: changes, logger: logger)
        let reloader = ConfigReloader(current: config, reload: reloadConfig, changes: changeSink,
                                      ipv6Switch: agent.ipv6Switch, status: status, logger: logger)
        let devices = DeviceWatcher(initial: network, changes: changeSink, status: status, logger: logger)
        let gc = ConntrackGC(datapath: datapath, lifetimes: config.conntrackLifetimes,
                             maxInterval: config.conntrackGCInterval, status: status, events: events, logger: logger)
        let eventReader = EventReader(datapath: datapath, hub: events, logger: logger)

        // The control API and the systemd notifier come last: they stop first on SIGTERM.
        let control = try control(datapath, status, events)

        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: reconciler), .init(service: agent), .init(service: reloader),
                           .init(service: devices), .init(service: gc), .init(service: eventReader)] + control,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
    }
}
