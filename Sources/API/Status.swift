import Foundation

/// `GET /v1/healthz`.
public struct HealthResponse: Codable, Sendable, Equatable {
    public enum State: String, OpenStringEnum {
        /// The datapath is attached to at least one device and the last reconcile succeeded.
        case ok = "Ok"
        /// Masquerading, but something needs attention: the last reconcile failed (the previous
        /// state stays in force) and has not been failing for long.
        case warning = "Warning"
        /// Not doing its job: the datapath is not attached, no device is in force (nothing is
        /// masqueraded), or reconciles keep failing.
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
    /// What `/v1/healthz` answers now: the state and, unless Ok, the reason.
    public var health: HealthResponse
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
    /// Config loads counted by source and outcome (as `masq_config_reloads_total`).
    public var configReloads: ConfigReloads
    /// Fill level of each datapath map.
    public var tables: [Table]
    /// Packets dropped, by reason (only reasons seen at least once, plus every known one).
    public var drops: [Drop]
    /// Both families' packets together (what each counter counted before masq translated IPv6).
    public var counters: Counters
    /// The same counters for each family apart.
    public var countersByFamily: CountersByFamily
    /// How hard port allocation works: candidates tried per allocation and the most saturated tuples.
    public var allocation: Allocation
    /// The conntrack garbage collector's passes and what they found.
    public var conntrackGC: ConntrackGC

    public init(version: String, startedAt: Date, uptimeSeconds: Double, health: HealthResponse, ready: Bool, attachMode: String?,
                masquerading: Masquerading, devices: [Device], skippedDevices: [SkippedDevice],
                reconcile: Reconcile, ipMasqAgent: IPMasqAgent, configReloads: ConfigReloads = .init(),
                tables: [Table], drops: [Drop], counters: Counters, countersByFamily: CountersByFamily = .init(),
                allocation: Allocation = .init(), conntrackGC: ConntrackGC = .init()) {
        self.version = version
        self.startedAt = startedAt
        self.uptimeSeconds = uptimeSeconds
        self.health = health
        self.ready = ready
        self.attachMode = attachMode
        self.masquerading = masquerading
        self.devices = devices
        self.skippedDevices = skippedDevices
        self.reconcile = reconcile
        self.ipMasqAgent = ipMasqAgent
        self.configReloads = configReloads
        self.tables = tables
        self.drops = drops
        self.counters = counters
        self.countersByFamily = countersByFamily
        self.allocation = allocation
        self.conntrackGC = conntrackGC
    }

    private enum CodingKeys: String, CodingKey {
        case version, startedAt, uptimeSeconds, health, ready, attachMode, masquerading, devices, skippedDevices
        case reconcile, ipMasqAgent, configReloads, tables, drops, counters, countersByFamily, allocation, conntrackGC
    }

    /// Parts added after the first release may be missing from an older masqd's answer: they
    /// read as empty (health as Unknown), so a newer client still shows the rest.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        version = try c.decode(String.self, forKey: .version)
        startedAt = try c.decode(Date.self, forKey: .startedAt)
        uptimeSeconds = try c.decode(Double.self, forKey: .uptimeSeconds)
        health = try c.decodeIfPresent(HealthResponse.self, forKey: .health) ?? HealthResponse(state: .unknown)
        ready = try c.decode(Bool.self, forKey: .ready)
        attachMode = try c.decodeIfPresent(String.self, forKey: .attachMode)
        masquerading = try c.decode(Masquerading.self, forKey: .masquerading)
        devices = try c.decode([Device].self, forKey: .devices)
        skippedDevices = try c.decode([SkippedDevice].self, forKey: .skippedDevices)
        reconcile = try c.decode(Reconcile.self, forKey: .reconcile)
        ipMasqAgent = try c.decode(IPMasqAgent.self, forKey: .ipMasqAgent)
        configReloads = try c.decodeIfPresent(ConfigReloads.self, forKey: .configReloads) ?? .init()
        tables = try c.decode([Table].self, forKey: .tables)
        drops = try c.decode([Drop].self, forKey: .drops)
        counters = try c.decode(Counters.self, forKey: .counters)
        countersByFamily = try c.decodeIfPresent(CountersByFamily.self, forKey: .countersByFamily) ?? .init()
        allocation = try c.decodeIfPresent(Allocation.self, forKey: .allocation) ?? .init()
        conntrackGC = try c.decodeIfPresent(ConntrackGC.self, forKey: .conntrackGC) ?? .init()
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
        /// The link type and driver ("ether(veth)", "none(tun)"); nil when masqd has not
        /// applied the device yet.
        public var kind: String?
        public var snatIPv4: IPAddress?
        public var snatIPv6: IPAddress?
        /// Why the device has no SNAT address of a family that is on (nil: it has one, or the
        /// family is off). It masquerades the other family only.
        public var snatIPv4Missing: String?
        public var snatIPv6Missing: String?

        public init(name: String, ifindex: UInt32, kind: String? = nil, snatIPv4: IPAddress?, snatIPv6: IPAddress?,
                    snatIPv4Missing: String? = nil, snatIPv6Missing: String? = nil) {
            self.name = name
            self.ifindex = ifindex
            self.kind = kind
            self.snatIPv4 = snatIPv4
            self.snatIPv6 = snatIPv6
            self.snatIPv4Missing = snatIPv4Missing
            self.snatIPv6Missing = snatIPv6Missing
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
        /// When the reconciles now failing started failing; nil while the last one succeeded.
        public var failingSince: Date?
        /// Reconciles failed in a row (0 while the last one succeeded).
        public var consecutiveFailures: Int

        public init(generation: Int, lastAppliedAt: Date?, lastError: String?, failingSince: Date? = nil,
                    consecutiveFailures: Int = 0) {
            self.generation = generation
            self.lastAppliedAt = lastAppliedAt
            self.lastError = lastError
            self.failingSince = failingSince
            self.consecutiveFailures = consecutiveFailures
        }

        private enum CodingKeys: String, CodingKey {
            case generation, lastAppliedAt, lastError, failingSince, consecutiveFailures
        }

        /// An older masqd does not send `consecutiveFailures`: read as 0.
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            generation = try c.decode(Int.self, forKey: .generation)
            lastAppliedAt = try c.decodeIfPresent(Date.self, forKey: .lastAppliedAt)
            lastError = try c.decodeIfPresent(String.self, forKey: .lastError)
            failingSince = try c.decodeIfPresent(Date.self, forKey: .failingSince)
            consecutiveFailures = try c.decodeIfPresent(Int.self, forKey: .consecutiveFailures) ?? 0
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
        /// For a table counted by the conntrack GC's last pass (the NAT tables), not per request:
        /// when it was counted, and how long ago.
        public var asOf: Date?
        public var ageSeconds: Double?

        public init(name: String, entries: Int, maxEntries: Int, asOf: Date? = nil, ageSeconds: Double? = nil) {
            self.name = name
            self.entries = entries
            self.maxEntries = maxEntries
            self.asOf = asOf
            self.ageSeconds = ageSeconds
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

    /// Datapath counters, summed over CPUs, by the status key `MASQ_STAT_LIST` (masq_abi.h)
    /// gives each (`snatPackets`, `tableFull`, ...).
    public struct Counters: Codable, Sendable, Equatable {
        public var values: [String: UInt64]

        public init(values: [String: UInt64] = [:]) {
            self.values = values
        }

        public subscript(key: String) -> UInt64? { values[key] }

        /// A field that is no counter (not an unsigned integer; a later masqd's) is skipped, as
        /// clients skip unknown fields.
        public init(from decoder: Decoder) throws {
            values = try decoder.singleValueContainer().decode([String: Counter].self).compactMapValues(\.value)
        }

        private struct Counter: Decodable {
            let value: UInt64?

            init(from decoder: Decoder) throws {
                value = try? decoder.singleValueContainer().decode(UInt64.self)
            }
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(values)
        }
    }

    /// `counters` of IPv4 and of IPv6 packets apart (the datapath counts each family in its own slots).
    public struct CountersByFamily: Codable, Sendable, Equatable {
        public var ipv4: Counters
        public var ipv6: Counters

        public init(ipv4: Counters = .init(), ipv6: Counters = .init()) {
            self.ipv4 = ipv4
            self.ipv6 = ipv6
        }
    }

    /// Config loads of one source: the ip-masq-agent file (at start and on each change of its
    /// directory) or the daemon config (SIGHUP).
    public struct ReloadCount: Codable, Sendable, Equatable {
        public var ok: Int
        public var error: Int
        public var lastAt: Date?
        /// The last load's error, kept until a load succeeds.
        public var lastError: String?

        public init(ok: Int = 0, error: Int = 0, lastAt: Date? = nil, lastError: String? = nil) {
            self.ok = ok
            self.error = error
            self.lastAt = lastAt
            self.lastError = lastError
        }
    }

    public struct ConfigReloads: Codable, Sendable, Equatable {
        public var ipMasqAgent: ReloadCount
        public var daemon: ReloadCount

        public init(ipMasqAgent: ReloadCount = .init(), daemon: ReloadCount = .init()) {
            self.ipMasqAgent = ipMasqAgent
            self.daemon = daemon
        }
    }

    /// Port allocation figures the datapath keeps (masq_alloc_hist, masq_sat_v4).
    public struct Allocation: Codable, Sendable, Equatable {
        /// Allocations (successful or failed) by candidate ports tried, one element per log2
        /// bucket, in order; not cumulative.
        public var histogram: [TriesBucket]
        /// All allocations the histogram counts.
        public var total: UInt64
        /// The most saturated (SNAT address, remote, remote port, protocol) tuples, by
        /// estimated use of the port range, then failures; at most 10.
        public var saturatedTuples: [TupleSaturation]

        public init(histogram: [TriesBucket] = [], total: UInt64 = 0, saturatedTuples: [TupleSaturation] = []) {
            self.histogram = histogram
            self.total = total
            self.saturatedTuples = saturatedTuples
        }
    }

    /// Allocations that tried between `minTries` and `maxTries` candidates (no `maxTries`:
    /// the last bucket, open above).
    public struct TriesBucket: Codable, Sendable, Equatable {
        public var minTries: Int
        public var maxTries: Int?
        public var count: UInt64

        public init(minTries: Int, maxTries: Int?, count: UInt64) {
            self.minTries = minTries
            self.maxTries = maxTries
            self.count = count
        }
    }

    /// One tuple's allocation figures as the datapath measured them since the tuple first
    /// needed more than its original port.
    public struct TupleSaturation: Codable, Sendable, Equatable {
        public var snat: IPAddress
        public var remote: IPAddress
        public var remotePort: UInt16
        public var proto: L4Protocol
        /// Share of the port range in use, 0-1, estimated from the random probes that hit a
        /// used port; absent before any probe.
        public var estimatedUse: Double?
        public var allocations: UInt64
        public var failures: UInt64
        public var scans: UInt64
        public var lastTries: UInt32
        public var maxTries: UInt32

        private enum CodingKeys: String, CodingKey {
            case snat, remote, remotePort, proto = "protocol", estimatedUse, allocations, failures, scans, lastTries, maxTries
        }

        public init(snat: IPAddress, remote: IPAddress, remotePort: UInt16, proto: L4Protocol, estimatedUse: Double?,
                    allocations: UInt64, failures: UInt64, scans: UInt64, lastTries: UInt32, maxTries: UInt32) {
            self.snat = snat
            self.remote = remote
            self.remotePort = remotePort
            self.proto = proto
            self.estimatedUse = estimatedUse
            self.allocations = allocations
            self.failures = failures
            self.scans = scans
            self.lastTries = lastTries
            self.maxTries = maxTries
        }
    }

    /// The conntrack GC: totals over the daemon's life and its last pass.
    public struct ConntrackGC: Codable, Sendable, Equatable {
        public var passes: Int
        public var lastPassAt: Date?
        public var lastPassSeconds: Double?
        /// The wait before the next pass (it adapts to what passes delete).
        public var intervalSeconds: Double
        public var expiredFlows: Int
        public var deletedEntries: Int
        /// Lone halves of expired flows deleted (each a flush, or a race with a flow being
        /// created or deleted).
        public var removedHalves: Int
        /// Passes started early because allocation pressure rose.
        public var pressureWakeups: Int
        public var lastPass: Pass?

        public init(passes: Int = 0, lastPassAt: Date? = nil, lastPassSeconds: Double? = nil, intervalSeconds: Double = 0,
                    expiredFlows: Int = 0, deletedEntries: Int = 0, removedHalves: Int = 0,
                    pressureWakeups: Int = 0, lastPass: Pass? = nil) {
            self.passes = passes
            self.lastPassAt = lastPassAt
            self.lastPassSeconds = lastPassSeconds
            self.intervalSeconds = intervalSeconds
            self.expiredFlows = expiredFlows
            self.deletedEntries = deletedEntries
            self.removedHalves = removedHalves
            self.pressureWakeups = pressureWakeups
            self.lastPass = lastPass
        }

        /// What one pass saw and did.
        public struct Pass: Codable, Sendable, Equatable {
            /// Entries in the NAT table when read.
            public var entries: Int
            public var expiredFlows: Int
            public var deletedEntries: Int
            public var removedHalves: Int
            /// The tuples holding the most ports (exact below 16384 tuples); at most 10.
            public var portsInUse: [TuplePorts]

            public init(entries: Int, expiredFlows: Int, deletedEntries: Int,
                        removedHalves: Int, portsInUse: [TuplePorts]) {
                self.entries = entries
                self.expiredFlows = expiredFlows
                self.deletedEntries = deletedEntries
                self.removedHalves = removedHalves
                self.portsInUse = portsInUse
            }
        }

        /// Ports held by one (SNAT address, remote, remote port, protocol) tuple.
        public struct TuplePorts: Codable, Sendable, Equatable {
            public var snat: IPAddress
            public var remote: IPAddress
            public var remotePort: UInt16
            public var proto: L4Protocol
            public var ports: Int
            /// `ports` over the size of snat-port-range (host flows keeping a port outside
            /// the range can take it past 1).
            public var rangeShare: Double

            private enum CodingKeys: String, CodingKey {
                case snat, remote, remotePort, proto = "protocol", ports, rangeShare
            }

            public init(snat: IPAddress, remote: IPAddress, remotePort: UInt16, proto: L4Protocol, ports: Int,
                        rangeShare: Double) {
                self.snat = snat
                self.remote = remote
                self.remotePort = remotePort
                self.proto = proto
                self.ports = ports
                self.rangeShare = rangeShare
            }
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
