import API
import Glibc
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
    /// Told `enable-ipv6-masquerade` when a reload changes it (the ip-masq-agent file's
    /// validity depends on it).
    let ipv6Switch: AsyncStream<Bool>.Continuation?
    /// Where each reload is counted (`masq_config_reloads_total{source="daemon"}`).
    let status: DaemonStatus
    let logger: Logger

    var description: String { "ConfigReloader" }

    init(current: DaemonConfig, reload: @escaping @Sendable () throws(ConfigErrors) -> DaemonConfig,
         changes: AsyncStream<ReconcileInputs.Change>.Continuation, ipv6Switch: AsyncStream<Bool>.Continuation? = nil,
         status: DaemonStatus, logger: Logger) {
        self.current = current
        self.reload = reload
        self.changes = changes
        self.ipv6Switch = ipv6Switch
        self.status = status
        var logger = logger
        logger[metadataKey: "service"] = "config"
        self.logger = logger
    }

    /// The config to run with after a reload: `new` with the restart-only keys kept as
    /// `running` has them, and the keys that changed but need a restart.
    static func merge(running: DaemonConfig, new: DaemonConfig) -> (DaemonConfig, [ConfigKey]) {
        var merged = new
        var pending: [ConfigKey] = []
        for key in ConfigKey.allCases {
            let binding = key.binding
            guard binding.reload == .restartOnly else { continue }
            binding.keep(&merged, running)
            if binding.differs(running, new) { pending.append(key) }
        }
        return (merged, pending)
    }

    func run() async throws {
        var running = current
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            running = reloadOnce(running: running)
        }
    }

    /// One reload (a SIGHUP), counted in status; returns the config to run with from now on.
    func reloadOnce(running: DaemonConfig) -> DaemonConfig {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let number = status.update {
            $0.daemonReloadsBegun += 1
            $0.daemonReloadBegunUSec = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
            return $0.daemonReloadsBegun
        }
        let new: DaemonConfig
        do {
            new = try reload()
        } catch {
            logger.error("Config reload rejected; the running config stays", metadata: ["error": "\(error)"])
            status.update {
                $0.configReloads.record(.daemon, error: "\(error)")
                $0.daemonReloadsSettled = number
            }
            return running
        }
        status.update { $0.configReloads.record(.daemon, error: nil) }
        let (merged, pending) = Self.merge(running: running, new: new)
        if !pending.isEmpty {
            logger.warning("Config keys changed that apply only after a restart",
                           metadata: ["config.keys": "\(pending.map(\.rawValue).joined(separator: ","))"])
        }
        if merged.enableIPv6Masquerade != running.enableIPv6Masquerade {
            ipv6Switch?.yield(merged.enableIPv6Masquerade)
        }
        if merged != running {
            // Settled by the reconciler once applied.
            changes.yield(.config(merged, reload: number))
        } else {
            status.update { $0.daemonReloadsSettled = number }
        }
        logger.info("Config reloaded")
        return merged
    }
}
