/// Every daemon config key, spelled as in the config file (kebab-case, as Cilium spells them).
/// Each is also a `masqd run` flag of the same name; a test holds the two in step.
public enum ConfigKey: String, CaseIterable, Sendable, Comparable {
    case enableIPv4Masquerade = "enable-ipv4-masquerade"
    case enableIPv6Masquerade = "enable-ipv6-masquerade"
    case ipv4NativeRoutingCIDR = "ipv4-native-routing-cidr"
    case ipv6NativeRoutingCIDR = "ipv6-native-routing-cidr"
    case podCIDRs = "pod-cidrs"
    case devices = "devices"
    case enableIPMasqAgent = "enable-ip-masq-agent"
    case ipMasqAgentConfigPath = "ip-masq-agent-config-path"
    case clusterNodeIPs = "cluster-node-ips"
    case snatPortRange = "snat-port-range"
    case natMaxEntries = "nat-max-entries"
    case socketPath = "socket-path"
    case socketGroup = "socket-group"
    case prometheusServeAddr = "prometheus-serve-addr"
    case bpffsRoot = "bpffs-root"
    case logLevel = "log-level"
    case attachMode = "attach-mode"
    case conntrackTCPSynTimeout = "conntrack-tcp-syn-timeout"
    case conntrackTCPEstablishedTimeout = "conntrack-tcp-established-timeout"
    case conntrackTCPFinWaitTimeout = "conntrack-tcp-fin-wait-timeout"
    case conntrackTCPCloseWaitTimeout = "conntrack-tcp-close-wait-timeout"
    case conntrackTCPClosingTimeout = "conntrack-tcp-closing-timeout"
    case conntrackUDPTimeout = "conntrack-udp-timeout"
    case conntrackUDPRepliedTimeout = "conntrack-udp-replied-timeout"
    case conntrackICMPTimeout = "conntrack-icmp-timeout"
    case conntrackGCInterval = "conntrack-gc-interval"

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// A setting as given, before it is typed: a scalar (a flag's text, a YAML scalar) or a list.
public enum RawSetting: Equatable, Sendable {
    case scalar(String)
    case list([String])

    /// A list as written: YAML sequences, or comma- (and space-) separated text as flags give it.
    var items: [String] {
        switch self {
        case .list(let items):
            return items
        case .scalar(let text):
            return text.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
        }
    }
}
