/// `GET /v1/config`: the daemon's effective config and the ip-masq-agent config in force.
public struct ConfigResponse: Codable, Sendable, Equatable {
    public var daemon: Daemon
    public var ipMasqAgent: IPMasqAgent

    public init(daemon: Daemon, ipMasqAgent: IPMasqAgent) {
        self.daemon = daemon
        self.ipMasqAgent = ipMasqAgent
    }

    /// Every config key (`masqd --help` and the config file spell them in kebab-case).
    public struct Daemon: Codable, Sendable, Equatable {
        public var enableIPv4Masquerade: Bool
        public var enableIPv6Masquerade: Bool
        public var ipv4NativeRoutingCIDR: IPPrefix?
        public var ipv6NativeRoutingCIDR: IPPrefix?
        public var podCIDRs: [IPPrefix]
        public var devices: [String]
        public var enableIPMasqAgent: Bool
        public var ipMasqAgentConfigPath: String
        public var clusterNodeIPs: [IPAddress]
        /// "LOW-HIGH".
        public var snatPortRange: String
        public var natMaxEntries: UInt32
        public var socketPath: String
        public var socketGroup: String?
        public var bpffsRoot: String
        public var logLevel: String
        public var attachMode: String
        /// The `conntrack-*` keys, in seconds.
        public var conntrack: Conntrack

        public init(enableIPv4Masquerade: Bool, enableIPv6Masquerade: Bool, ipv4NativeRoutingCIDR: IPPrefix?,
                    ipv6NativeRoutingCIDR: IPPrefix?, podCIDRs: [IPPrefix], devices: [String], enableIPMasqAgent: Bool,
                    ipMasqAgentConfigPath: String, clusterNodeIPs: [IPAddress],
                    snatPortRange: String, natMaxEntries: UInt32, socketPath: String, socketGroup: String?,
                    bpffsRoot: String, logLevel: String, attachMode: String, conntrack: Conntrack) {
            self.enableIPv4Masquerade = enableIPv4Masquerade
            self.enableIPv6Masquerade = enableIPv6Masquerade
            self.ipv4NativeRoutingCIDR = ipv4NativeRoutingCIDR
            self.ipv6NativeRoutingCIDR = ipv6NativeRoutingCIDR
            self.podCIDRs = podCIDRs
            self.devices = devices
            self.enableIPMasqAgent = enableIPMasqAgent
            self.ipMasqAgentConfigPath = ipMasqAgentConfigPath
            self.clusterNodeIPs = clusterNodeIPs
            self.snatPortRange = snatPortRange
            self.natMaxEntries = natMaxEntries
            self.socketPath = socketPath
            self.socketGroup = socketGroup
            self.bpffsRoot = bpffsRoot
            self.logLevel = logLevel
            self.attachMode = attachMode
            self.conntrack = conntrack
        }

        /// Each field with its config key, in the file's spelling, for human output.
        public var keyedValues: [(key: String, value: String)] {
            func list<T: CustomStringConvertible>(_ items: [T]) -> String {
                "[" + items.map(\.description).joined(separator: ", ") + "]"
            }
            return [
                ("enable-ipv4-masquerade", String(enableIPv4Masquerade)),
                ("enable-ipv6-masquerade", String(enableIPv6Masquerade)),
                ("ipv4-native-routing-cidr", ipv4NativeRoutingCIDR?.description ?? ""),
                ("ipv6-native-routing-cidr", ipv6NativeRoutingCIDR?.description ?? ""),
                ("pod-cidrs", list(podCIDRs)),
                ("devices", list(devices)),
                ("enable-ip-masq-agent", String(enableIPMasqAgent)),
                ("ip-masq-agent-config-path", ipMasqAgentConfigPath),
                ("cluster-node-ips", list(clusterNodeIPs)),
                ("snat-port-range", snatPortRange),
                ("nat-max-entries", String(natMaxEntries)),
                ("socket-path", socketPath),
                ("socket-group", socketGroup ?? ""),
                ("bpffs-root", bpffsRoot),
                ("log-level", logLevel),
                ("attach-mode", attachMode),
                ("conntrack-tcp-syn-timeout", "\(conntrack.tcpSynTimeout)s"),
                ("conntrack-tcp-established-timeout", "\(conntrack.tcpEstablishedTimeout)s"),
                ("conntrack-tcp-closing-timeout", "\(conntrack.tcpClosingTimeout)s"),
                ("conntrack-udp-timeout", "\(conntrack.udpTimeout)s"),
                ("conntrack-udp-replied-timeout", "\(conntrack.udpRepliedTimeout)s"),
                ("conntrack-icmp-timeout", "\(conntrack.icmpTimeout)s"),
                ("conntrack-gc-interval", "\(conntrack.gcInterval)s"),
            ]
        }
    }

    /// Flow lifetimes and the GC's longest interval, in seconds.
    public struct Conntrack: Codable, Sendable, Equatable {
        public var tcpSynTimeout: Double
        public var tcpEstablishedTimeout: Double
        public var tcpClosingTimeout: Double
        public var udpTimeout: Double
        public var udpRepliedTimeout: Double
        public var icmpTimeout: Double
        public var gcInterval: Double

        public init(tcpSynTimeout: Double, tcpEstablishedTimeout: Double, tcpClosingTimeout: Double,
                    udpTimeout: Double, udpRepliedTimeout: Double, icmpTimeout: Double, gcInterval: Double) {
            self.tcpSynTimeout = tcpSynTimeout
            self.tcpEstablishedTimeout = tcpEstablishedTimeout
            self.tcpClosingTimeout = tcpClosingTimeout
            self.udpTimeout = udpTimeout
            self.udpRepliedTimeout = udpRepliedTimeout
            self.icmpTimeout = icmpTimeout
            self.gcInterval = gcInterval
        }
    }

    /// The ip-masq-agent config as last loaded (nil fields: not loaded, or the agent is off).
    public struct IPMasqAgent: Codable, Sendable, Equatable {
        public var enabled: Bool
        public var configPath: String
        public var generation: Int
        public var lastError: String?
        /// The non-masquerade list in force (with defaults and link-local ranges applied).
        public var nonMasqueradeCIDRs: [IPPrefix]

        public init(enabled: Bool, configPath: String, generation: Int, lastError: String?, nonMasqueradeCIDRs: [IPPrefix]) {
            self.enabled = enabled
            self.configPath = configPath
            self.generation = generation
            self.lastError = lastError
            self.nonMasqueradeCIDRs = nonMasqueradeCIDRs
        }
    }
}
