import Foundation
import Logging
import NetworkTypes
import ServiceLifecycle

/// Owns the non-masquerade list: loads the ip-masq-agent file at start and whenever its
/// directory changes, and hands every new valid list to the reconciler. An invalid file changes
/// nothing: the last good list stays in force and the error stays in status until a good file
/// arrives.
struct IPMasqAgentWatcher: Service, CustomStringConvertible {
    let path: String
    /// `enable-ip-masq-agent` at start. The watcher runs either way, so that turning the agent
    /// on by SIGHUP finds the list loaded; while it is off, loads are logged at debug only.
    let enabledAtStart: Bool
    /// `enable-ipv6-masquerade` at start; a SIGHUP that changes it says so through `ipv6Switch`,
    /// and the file is read again (an IPv6 CIDR is invalid while it is off).
    let ipv6AtStart: Bool
    private let ipv6Changes: AsyncStream<Bool>
    let ipv6Switch: AsyncStream<Bool>.Continuation
    /// The list in force from the first reconcile on (see `loadAtStart(pinned:)`).
    var initial: NonMasqueradeList?
    let status: DaemonStatus
    let changes: AsyncStream<ReconcileInputs.Change>.Continuation
    let logger: Logger
    /// Quiet time after an event before the file is read, so a burst of events (a ConfigMap
    /// swap is several) becomes one reload.
    static let debounce: Duration = .milliseconds(20)

    var description: String { "IPMasqAgentWatcher" }

    init(path: String, enabledAtStart: Bool, ipv6AtStart: Bool = true, status: DaemonStatus,
         changes: AsyncStream<ReconcileInputs.Change>.Continuation, logger: Logger) {
        self.path = path
        self.enabledAtStart = enabledAtStart
        self.ipv6AtStart = ipv6AtStart
        (ipv6Changes, ipv6Switch) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(1))
        self.status = status
        self.changes = changes
        var logger = logger
        logger[metadataKey: "service"] = "ip-masq-agent"
        logger[metadataKey: "config.path"] = "\(path)"
        self.logger = logger
    }

    /// Whether the agent is on in the config in force (SIGHUP may have changed it).
    private var inUse: Bool { status.snapshot.config?.enableIPMasqAgent ?? enabledAtStart }

    /// Reads and parses the file. Missing or empty: the defaults.
    static func read(path: String, ipv6Enabled: Bool = true) -> Result<IPMasqAgentConfig, IPMasqAgentError> {
        let text: String
        do {
            guard let read = try TextFile.read(path) else { return .success(.defaults) }
            text = read
        } catch {
            return .failure(IPMasqAgentError(path: path, line: nil, message: "cannot be read: \(error)"))
        }
        return Result { () throws(IPMasqAgentError) in try IPMasqAgentConfig.parse(text, path: path, ipv6Enabled: ipv6Enabled) }
    }

    /// Loads the file once and records the outcome; returns the list to apply when it is valid
    /// and differs from `current`. A load counts as a reload (`masq_config_reloads_total`) only
    /// when its outcome differs from the last one's: the safety re-read of an unchanged file,
    /// good or bad, is not a reload.
    @discardableResult
    func load(current: NonMasqueradeList?, ipv6Enabled: Bool) -> NonMasqueradeList? {
        let outcome = Self.read(path: path, ipv6Enabled: ipv6Enabled)
        let last = status.snapshot.ipMasqAgent
        switch outcome {
        case .failure(let error):
            let again = last.lastError == error.description
            logger.log(level: inUse && !again ? .error : .debug, "ip-masq-agent config rejected; the last good list stays in force",
                       metadata: ["error": "\(error)"])
            status.update {
                $0.ipMasqAgent.lastLoadAt = .now
                $0.ipMasqAgent.lastError = error.description
                if !again { $0.configReloads.record(.ipMasqAgent, error: error.description) }
            }
            return nil
        case .success(let config):
            let list = config.effectiveList
            let changed = list != current
            let again = !changed && last.lastLoadAt != nil && last.lastError == nil
            if !config.ignoredKeys.isEmpty && !again {
                logger.log(level: inUse ? .info : .debug, "ip-masq-agent config keys ignored", metadata: ["config.ignored": "\(config.ignoredKeys.joined(separator: ","))"])
            }
            status.update {
                $0.ipMasqAgent.lastLoadAt = .now
                $0.ipMasqAgent.lastError = nil
                if !again { $0.configReloads.record(.ipMasqAgent, error: nil) }
                if changed {
                    $0.ipMasqAgent.generation += 1
                    $0.ipMasqAgent.cidrs = list.cidrs
                    $0.ipMasqAgent.origin = .file
                }
            }
            guard changed else { return nil }
            logger.log(level: inUse ? .info : .debug, "ip-masq-agent config loaded", metadata: [
                "config.generation": "\(status.snapshot.ipMasqAgent.generation)",
                "config.cidrs": "\(list.cidrs.count)",
            ])
            return list
        }
    }

    /// Loads the file before the first reconcile, so no packet sees a list-less moment. An
    /// invalid file keeps the last good list: the one the pinned map holds from before a restart,
    /// or, on a fresh start (the map holds none), the defaults, as ip-masq-agent starts from them.
    mutating func loadAtStart(pinned: [IPPrefix]) {
        if let list = load(current: nil, ipv6Enabled: ipv6AtStart) {
            initial = list
            return
        }
        let list = pinned.isEmpty ? IPMasqAgentConfig.defaults.effectiveList : NonMasqueradeList(cidrs: pinned)
        status.update {
            $0.ipMasqAgent.cidrs = list.cidrs
            $0.ipMasqAgent.origin = pinned.isEmpty ? .defaults : .pinned
        }
        logger.log(level: inUse ? .warning : .debug, "ip-masq-agent list in force until a valid file arrives", metadata: [
            "config.list": "\(pinned.isEmpty ? "defaults" : "pinned before the restart")",
            "config.cidrs": "\(list.cidrs.count)",
        ])
        initial = list
    }

    private enum Event: Sendable {
        case file
        case ipv6(Bool)
    }

    func run() async throws {
        let watch = try DirectoryWatch(file: path)
        watch.start()
        var current = initial
        var ipv6Enabled = ipv6AtStart
        // The file's events and the IPv6 switch, one stream so that one loop owns `current`.
        let (events, sink) = AsyncStream.makeStream(of: Event.self)
        let forwardFile = Task {
            for await _ in watch.events { sink.yield(.file) }
            sink.finish()
        }
        let forwardSwitch = Task {
            for await enabled in ipv6Changes { sink.yield(.ipv6(enabled)) }
        }
        defer {
            forwardFile.cancel()
            forwardSwitch.cancel()
        }
        await withGracefulShutdownHandler {
            for await event in events {
                switch event {
                case .file: try? await Task.sleep(for: Self.debounce)
                case .ipv6(let enabled): ipv6Enabled = enabled
                }
                if let list = load(current: current, ipv6Enabled: ipv6Enabled) {
                    current = list
                    changes.yield(.nonMasquerade(list))
                }
            }
        } onGracefulShutdown: {
            watch.stop()
        }
    }
}
