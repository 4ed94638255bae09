import Logging
import ServiceLifecycle

/// masqd's services in dependency order: a service may rely on those listed before it, and
/// graceful shutdown (SIGTERM, SIGINT) stops them in reverse.
enum MasqDaemon {
    static func run(config: DaemonConfig, objectBytes: [UInt8]?, logger: Logger) async throws {
        let datapath = try Datapath(config: config, objectBytes: objectBytes, logger: logger)
        let status = DaemonStatus()
        let (changes, _) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        let inputs = ReconcileInputs(config: config, network: try NetworkSnapshot.read())
        let reconciler = ReconcilerService(
            datapath: datapath, status: status, initial: inputs, changes: changes, logger: logger)

        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: reconciler)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
    }
}
