import Logging
import ServiceLifecycle
import UnixSignals

/// Re-reads the daemon's config on SIGHUP. Keys that the datapath can change live go to the
/// reconciler; the others keep their running value and are reported as needing a restart. An
/// invalid config changes nothing.
struct ConfigReloader: Service, CustomStringConvertible {
    let current: DaemonConfig
    let reload: @Sendable () throws(ConfigErrors) -> DaemonConfig
    let changes: AsyncStream<ReconcileInputs.Change>.Continuation
    /// Where each reload is counted (`masq_config_reloads_total{source="daemon"}`).
    let status: DaemonStatus
    let logger: Logger

    var description: String { "ConfigReloader" }

    init(current: DaemonConfig, reload: @escaping @Sendable () throws(ConfigErrors) -> DaemonConfig,
         changes: AsyncStream<ReconcileInputs.Change>.Continuation, status: DaemonStatus, logger: Logger) {
        self.current = current
        self.reload = reload
        self.changes = changes
        self.status = status
        var logger = logger
        logger[metadataKey: "service"] = "config"
        self.logger = logger
    }

    /// A key read only at start: its running value is kept across reloads.
    struct RestartOnly: Sendable {
        let key: ConfigKey
        let keep: @Sendable (_ into: inout DaemonConfig, _ from: DaemonConfig) -> Void
        let differs: @Sendable (DaemonConfig, DaemonConfig) -> Bool

        static func field<T: Equatable & Sendable>(_ key: ConfigKey, _ path: WritableKeyPath<DaemonConfig, T> & Sendable) -> Self {
            Self(key: key, keep: { $0[keyPath: path] = $1[keyPath: path] }, differs: { $0[keyPath: path] != $1[keyPath: path] })
        }
    }

    /// The bpffs root, map sizes, sockets and listeners, logging, attach mode, the watched file, the IPv6
    /// switch (the file's validation depends on it) and the conntrack lifetimes are fixed for
    /// the life of the process.
    static let restartOnly: [RestartOnly] = [
        .field(.bpffsRoot, \DaemonConfig.bpffsRoot), .field(.natMaxEntries, \DaemonConfig.natMaxEntries),
        .field(.socketPath, \DaemonConfig.socketPath), .field(.socketGroup, \DaemonConfig.socketGroup),
        .field(.prometheusServeAddr, \DaemonConfig.prometheusServeAddr),
        .field(.logLevel, \DaemonConfig.logLevel), .field(.attachMode, \DaemonConfig.attachMode),
        .field(.ipMasqAgentConfigPath, \DaemonConfig.ipMasqAgentConfigPath),
        .field(.enableIPv6Masquerade, \DaemonConfig.enableIPv6Masquerade),
        // The conntrack GC and the API read the flow lifetimes and the GC interval at start.
        .field(.conntrackTCPSynTimeout, \DaemonConfig.conntrackLifetimes.tcpSynSent),
        .field(.conntrackTCPEstablishedTimeout, \DaemonConfig.conntrackLifetimes.tcpEstablished),
        .field(.conntrackTCPFinWaitTimeout, \DaemonConfig.conntrackLifetimes.tcpFinWait),
        .field(.conntrackTCPCloseWaitTimeout, \DaemonConfig.conntrackLifetimes.tcpCloseWait),
        .field(.conntrackTCPClosingTimeout, \DaemonConfig.conntrackLifetimes.tcpClosing),
        .field(.conntrackUDPTimeout, \DaemonConfig.conntrackLifetimes.udpUnreplied),
        .field(.conntrackUDPRepliedTimeout, \DaemonConfig.conntrackLifetimes.udpReplied),
        .field(.conntrackICMPTimeout, \DaemonConfig.conntrackLifetimes.icmp),
        .field(.conntrackGCInterval, \DaemonConfig.conntrackGCInterval),
    ]

    /// The config to run with after a reload: `new` with the restart-only keys kept as
    /// `running` has them, and the keys that changed but need a restart.
    static func merge(running: DaemonConfig, new: DaemonConfig) -> (DaemonConfig, [ConfigKey]) {
        var merged = new
        for field in restartOnly { field.keep(&merged, running) }
        return (merged, restartOnly.filter { $0.differs(running, new) }.map(\.key))
    }

    func run() async throws {
        var running = current
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            running = reloadOnce(running: running)
        }
    }

    /// One reload (a SIGHUP), counted in status; returns the config to run with from now on.
    func reloadOnce(running: DaemonConfig) -> DaemonConfig {
        let new: DaemonConfig
        do {
            new = try reload()
        } catch {
            logger.error("Config reload rejected; the running config stays", metadata: ["error": "\(error)"])
            status.update { $0.configReloads.record(.daemon, error: "\(error)") }
            return running
        }
        status.update { $0.configReloads.record(.daemon, error: nil) }
        let (merged, pending) = Self.merge(running: running, new: new)
        if !pending.isEmpty {
            logger.warning("Config keys changed that apply only after a restart",
                           metadata: ["config.keys": "\(pending.map(\.rawValue).joined(separator: ","))"])
        }
        if merged != running {
            changes.yield(.config(merged))
        }
        logger.info("Config reloaded")
        return merged
    }
}
