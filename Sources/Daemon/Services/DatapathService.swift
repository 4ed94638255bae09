import Logging
import ServiceLifecycle

/// Loads the datapath, brings it to the desired state and keeps it there until graceful
/// shutdown. On shutdown it returns without detaching: programs and pinned state stay, so
/// flows keep working while masqd restarts; only `masqd uninstall` takes them away.
struct DatapathService: Service {
    let config: DaemonConfig
    /// The BPF object to load instead of the embedded one (`--bpf-object`).
    let objectBytes: [UInt8]?
    let logger: Logger

    init(config: DaemonConfig, objectBytes: [UInt8]? = nil, logger: Logger) {
        self.config = config
        self.objectBytes = objectBytes
        var logger = logger
        logger[metadataKey: "service"] = "datapath"
        self.logger = logger
    }

    func run() async throws {
        let datapath = try Datapath(config: config, objectBytes: objectBytes, logger: logger)
        let state = DesiredState(config: config, network: try NetworkSnapshot.read())
        for (name, reason) in state.skippedDevices.sorted(by: { $0.key < $1.key }) {
            logger.warning("Configured device not in force", metadata: ["device.name": "\(name)", "reason": "\(reason)"])
        }
        if state.devices.isEmpty {
            logger.warning("No masquerading device: nothing is masqueraded")
        }
        let report = try await datapath.apply(state)
        let devices = state.devices.map { "\($0.name)=\($0.snatV4?.description ?? "-")" }
        logger.info("masqd ready", metadata: [
            "attach.mode": "\(datapath.mode.rawValue)",
            "devices": "\(devices.joined(separator: ","))",
            "bpffs.root": "\(config.bpffsRoot)",
            "cidrs.added": "\(report.cidrsAdded)",
            "cidrs.removed": "\(report.cidrsRemoved)",
        ])
        try? await gracefulShutdown()
        logger.info("Stopping; programs and pinned state stay in place")
    }
}

extension DatapathService: CustomStringConvertible {
    var description: String { "DatapathService" }
}
