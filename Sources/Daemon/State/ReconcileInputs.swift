import Netlink
import NetworkTypes

/// The non-masquerade list in force, as its source (the ip-masq-agent file) last loaded it.
public struct NonMasqueradeList: Equatable, Sendable {
    public var cidrs: [IPPrefix]

    public init(cidrs: [IPPrefix]) {
        self.cidrs = cidrs
    }
}

/// Everything the desired state is computed from. Each part has one owner that replaces it
/// whole: the config (start, SIGHUP), the network (the device watcher), the non-masquerade list
/// (the ip-masq-agent watcher).
public struct ReconcileInputs: Equatable, Sendable {
    public var config: DaemonConfig
    public var network: NetworkSnapshot
    /// nil: the ip-masq-agent list is not known, and the non-masquerade map keeps what it holds.
    /// masqd always knows one (`IPMasqAgentWatcher.loadAtStart(pinned:)`).
    public var nonMasquerade: NonMasqueradeList?

    public init(config: DaemonConfig, network: NetworkSnapshot, nonMasquerade: NonMasqueradeList? = nil) {
        self.config = config
        self.network = network
        self.nonMasquerade = nonMasquerade
    }

    /// One owner's new value for its part.
    public enum Change: Sendable {
        /// `reload`: the SIGHUP reload it comes from (`DaemonStatus.Snapshot.daemonReloadsBegun`
        /// then), settled once the reconciler has applied it.
        case config(DaemonConfig, reload: Int)
        case network(NetworkSnapshot)
        case nonMasquerade(NonMasqueradeList)
    }

    public mutating func apply(_ change: Change) {
        switch change {
        case .config(let c, _): config = c
        case .network(let n): network = n
        case .nonMasquerade(let l): nonMasquerade = l
        }
    }
}
