import Foundation

/// `GET /v1/healthz`.
public struct HealthResponse: Codable, Sendable, Equatable {
    public enum State: String, OpenStringEnum {
        /// The datapath is attached and the last reconcile succeeded.
        case ok = "Ok"
        /// Serving, but something needs attention (the last reconcile failed; the previous state stays in force).
        case warning = "Warning"
        /// Not serving its purpose (the datapath is not attached).
        case failure = "Failure"
        case unknown = "Unknown"
    }

    public var state: State
    public var message: String?

    public init(state: State, message: String? = nil) {
        self.state = state
        self.message = message
    }
}

/// `GET /v1/status`.
public struct StatusResponse: Codable, Sendable, Equatable {
    public var version: String
    public var startedAt: Date
    public var uptimeSeconds: Double
    /// The datapath is attached to its devices.
    public var ready: Bool
    /// "tcx" or "tc"; nil before the datapath is attached.
    public var attachMode: String?
    public var masquerading: Masquerading
    /// The masquerading devices with the addresses their flows leave with, read from the maps.
    public var devices: [Device]
    /// Devices the config names that are not in force, with the reason.
    public var skippedDevices: [SkippedDevice]
    public var reconcile: Reconcile
    public var ipMasqAgent: IPMasqAgent
    /// Fill level of each datapath map.
    public var tables: [Table]
    /// Packets dropped, by reason (only reasons seen at least once, plus every known one).
    public var drops: [Drop]
    public var counters: Counters

    public init(version: String, startedAt: Date, uptimeSeconds: Double, ready: Bool, attachMode: String?,
                masquerading: Masquerading, devices: [Device], skippedDevices: [SkippedDevice],
                reconcile: Reconcile, ipMasqAgent: IPMasqAgent, tables: [Table], drops: [Drop],
                counters: Counters) {
        self.version = version
        self.startedAt = startedAt
        self.uptimeSeconds = uptimeSeconds
        self.ready = ready
        self.attachMode = attachMode
        self.masquerading = masquerading
        self.devices = devices
        self.skippedDevices = skippedDevices
        self.reconcile = reconcile
        self.ipMasqAgent = ipMasqAgent
        self.tables = tables
        self.drops = drops
        self.counters = counters
    }

    /// The masquerading summary, shaped like Cilium's status model.
    public struct Masquerading: Codable, Sendable, Equatable {
        public var enabled: Bool
        /// Always "BPF".
        public var mode: String
        public var ipMasqAgent: Bool
        public var devices: [String]
        public var enabledProtocols: EnabledProtocols
        /// Destinations never masqueraded (exclusion 1): the native-routing CIDR, else the pod CIDRs.
        public var snatExclusionCIDRv4: String?
        public var snatExclusionCIDRv6: String?

        public init(enabled: Bool, mode: String = "BPF", ipMasqAgent: Bool, devices: [String],
                    enabledProtocols: EnabledProtocols, snatExclusionCIDRv4: String?, snatExclusionCIDRv6: String?) {
            self.enabled = enabled
            self.mode = mode
            self.ipMasqAgent = ipMasqAgent
            self.devices = devices
            self.enabledProtocols = enabledProtocols
            self.snatExclusionCIDRv4 = snatExclusionCIDRv4
            self.snatExclusionCIDRv6 = snatExclusionCIDRv6
        }
    }

    public struct EnabledProtocols: Codable, Sendable, Equatable {
        public var ipv4: Bool
        public var ipv6: Bool

        public init(ipv4: Bool, ipv6: Bool) {
            self.ipv4 = ipv4
            self.ipv6 = ipv6
        }
    }

    public struct Device: Codable, Sendable, Equatable {
        public var name: String
        public var ifindex: UInt32
        public var snatIPv4: IPAddress?
        public var snatIPv6: IPAddress?

        public init(name: String, ifindex: UInt32, snatIPv4: IPAddress?, snatIPv6: IPAddress?) {
            self.name = name
            self.ifindex = ifindex
            self.snatIPv4 = snatIPv4
            self.snatIPv6 = snatIPv6
        }
    }

    public struct SkippedDevice: Codable, Sendable, Equatable {
        public var name: String
        public var reason: String

        public init(name: String, reason: String) {
            self.name = name
            self.reason = reason
        }
    }

    /// The reconciler: how often the desired state was applied and the last failure.
    public struct Reconcile: Codable, Sendable, Equatable {
        public var generation: Int
        public var lastAppliedAt: Date?
        public var lastError: String?

        public init(generation: Int, lastAppliedAt: Date?, lastError: String?) {
            self.generation = generation
            self.lastAppliedAt = lastAppliedAt
            self.lastError = lastError
        }
    }

    /// The ip-masq-agent config file as last loaded.
    public struct IPMasqAgent: Codable, Sendable, Equatable {
        public var enabled: Bool
        public var path: String
        /// Counts the distinct valid lists loaded; 0: none yet.
        public var generation: Int
        public var lastLoadAt: Date?
        /// The last load's error, kept until a valid file is loaded.
        public var lastError: String?

        public init(enabled: Bool, path: String, generation: Int, lastLoadAt: Date?, lastError: String?) {
            self.enabled = enabled
            self.path = path
            self.generation = generation
            self.lastLoadAt = lastLoadAt
            self.lastError = lastError
        }
    }

    public struct Table: Codable, Sendable, Equatable {
        /// The map's name (masq_nat_v4, ...).
        public var name: String
        public var entries: Int
        public var maxEntries: Int

        public init(name: String, entries: Int, maxEntries: Int) {
            self.name = name
            self.entries = entries
            self.maxEntries = maxEntries
        }
    }

    public struct Drop: Codable, Sendable, Equatable {
        /// The stable snake_case label (as in /metrics).
        public var reason: String
        /// The datapath's numeric code.
        public var code: Int
        public var summary: String
        public var count: UInt64

        public init(reason: String, code: Int, summary: String, count: UInt64) {
            self.reason = reason
            self.code = code
            self.summary = summary
            self.count = count
        }
    }

    /// Datapath counters, summed over CPUs.
    public struct Counters: Codable, Sendable, Equatable {
        public var snatPackets: UInt64
        public var revSnatPackets: UInt64
        public var allocations: UInt64
        public var allocationsKeptPort: UInt64
        public var allocationRetries: UInt64
        public var allocationFailures: UInt64
        public var hostFlows: UInt64
        public var inboundFlows: UInt64

        public init(snatPackets: UInt64 = 0, revSnatPackets: UInt64 = 0, allocations: UInt64 = 0,
                    allocationsKeptPort: UInt64 = 0, allocationRetries: UInt64 = 0, allocationFailures: UInt64 = 0,
                    hostFlows: UInt64 = 0, inboundFlows: UInt64 = 0) {
            self.snatPackets = snatPackets
            self.revSnatPackets = revSnatPackets
            self.allocations = allocations
            self.allocationsKeptPort = allocationsKeptPort
            self.allocationRetries = allocationRetries
            self.allocationFailures = allocationFailures
            self.hostFlows = hostFlows
            self.inboundFlows = inboundFlows
        }
    }
}

extension StatusResponse.Masquerading {
    /// The Cilium-style status line:
    /// `BPF (ip-masq-agent)   [eth0, eth1]   10.0.0.0/16   [IPv4: Enabled, IPv6: Disabled]`.
    public var summaryLine: String {
        guard enabled else { return "Disabled" }
        var parts = [ipMasqAgent ? "\(mode) (ip-masq-agent)" : mode]
        parts.append("[\(devices.joined(separator: ", "))]")
        let exclusions = [snatExclusionCIDRv4, snatExclusionCIDRv6].compactMap { $0 }
        if !exclusions.isEmpty { parts.append(exclusions.joined(separator: " ")) }
        func word(_ on: Bool) -> String { on ? "Enabled" : "Disabled" }
        parts.append("[IPv4: \(word(enabledProtocols.ipv4)), IPv6: \(word(enabledProtocols.ipv6))]")
        return parts.joined(separator: "   ")
    }
}

/// `GET /v1/ipmasq`: the non-masquerade CIDRs as read back from the datapath's maps.
public struct IPMasqResponse: Codable, Sendable, Equatable {
    public var cidrs: [IPPrefix]

    public init(cidrs: [IPPrefix]) {
        self.cidrs = cidrs
    }
}
