import Datapath
import Foundation
import NetworkTypes
import Synchronization

/// What the daemon has done, for status and the API: written by the services, read by anyone.
public final class DaemonStatus: Sendable {
    public struct Snapshot: Sendable {
        public var startedAt = Date()
        public var attachKind: AttachKind?
        /// The desired state last applied to the datapath, and when.
        public var applied: DesiredState?
        public var appliedAt: Date?
        public var applyCount = 0
        /// The last reconcile failure, kept until a reconcile succeeds.
        public var lastApplyError: String?
        /// When the reconciles now failing started failing; nil while the last one succeeded.
        public var failingSince: Date?
        /// Reconciles failed in a row.
        public var consecutiveFailures = 0
        /// The datapath is attached to its devices (the first reconcile succeeded).
        public var ready = false
        /// When the device watcher last saw the links, addresses or default routes change.
        public var networkChangedAt: Date?
        /// The device watcher's last failure to read the network, kept until a read succeeds.
        public var lastNetworkError: String?
        public var ipMasqAgent = IPMasqAgentState()
        /// The daemon config in force, as the reconciler last received it (SIGHUP reloads).
        public var config: DaemonConfig?
        /// The conntrack GC's passes, totals and the last pass's report.
        public var conntrackGC = ConntrackGCState()
        /// The NAT tables' entries and flows as the last GC pass left them (or as the API
        /// counted them before the first pass); nil until either has.
        public var natSummary: NATSummary?
        /// Config loads by source (ip-masq-agent file, daemon config on SIGHUP) and outcome.
        public var configReloads = ConfigReloads()
        /// SIGHUP reloads begun, and when the last began (CLOCK_MONOTONIC, µs), for systemd's
        /// RELOADING=1.
        public var daemonReloadsBegun = 0
        public var daemonReloadBegunUSec: UInt64 = 0
        /// The last SIGHUP reload whose outcome is in force (rejected, changing nothing, or
        /// applied by the reconciler): systemd's READY=1 that ends RELOADING=1 waits for it.
        public var daemonReloadsSettled = 0
    }

    /// The ip-masq-agent file as the watcher last saw it.
    public struct IPMasqAgentState: Sendable {
        /// Counts the distinct valid lists loaded; 0: none yet.
        public var generation = 0
        public var lastLoadAt: Date?
        /// The last load's error, kept until a valid file is loaded.
        public var lastError: String?
        /// The list of the last valid load (what the reconciler was given).
        public var cidrs: [IPPrefix] = []
        /// Where `cidrs` came from: a valid file, or, until one arrives, what `loadAtStart` fell back to.
        public var origin: ListOrigin = .defaults
    }

    /// Where the ip-masq-agent list in force came from.
    public enum ListOrigin: Sendable {
        case file
        /// The list the pinned map held from before a restart.
        case pinned
        /// ip-masq-agent's default list (a fresh start with an invalid file).
        case defaults
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public var snapshot: Snapshot { state.withLock { $0 } }

    @discardableResult
    public func update<Result>(_ body: (inout Snapshot) -> Result) -> Result {
        state.withLock { body(&$0) }
    }
}
