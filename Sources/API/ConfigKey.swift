/// Every daemon config key, spelled as in the config file (kebab-case, as Cilium spells them),
/// in the order `masqd run --help`, `/v1/config` and `masq-client config` list them.
///
/// A key is declared here once: its flag and file name, help text, and how `/v1/config` shows
/// it (`spec`). masqd binds each to its `DaemonConfig` field, parser and reload behaviour in
/// one more switch (`ConfigKey.binding` in the Daemon target); the flags, the file parser, the
/// restart-only check, `/v1/config` and `masq-client config` all derive from the two.
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

    /// What the key's declaration says beyond its name.
    public struct Spec: Sendable {
        /// Where `/v1/config`'s `daemon` object holds the value: a field, or an object and its field.
        public var json: [String]
        public var kind: ConfigValue.Kind
        /// The `masqd run --<key>` help text.
        public var help: String
    }

    public var spec: Spec {
        switch self {
        case .enableIPv4Masquerade:
            Spec(json: ["enableIPv4Masquerade"], kind: .bool, help: "Masquerade IPv4 traffic (true or false; default true).")
        case .enableIPv6Masquerade:
            Spec(json: ["enableIPv6Masquerade"], kind: .bool, help: "Masquerade IPv6 traffic (true or false; default true).")
        case .ipv4NativeRoutingCIDR:
            Spec(json: ["ipv4NativeRoutingCIDR"], kind: .optionalText,
                 help: "IPv4 destinations routed without masquerading (replaces the pod-CIDR exclusion).")
        case .ipv6NativeRoutingCIDR:
            Spec(json: ["ipv6NativeRoutingCIDR"], kind: .optionalText, help: "IPv6 destinations routed without masquerading.")
        case .podCIDRs:
            Spec(json: ["podCIDRs"], kind: .list, help: "Comma-separated CIDRs whose traffic is masqueraded (required).")
        case .devices:
            Spec(json: ["devices"], kind: .list,
                 help: "Comma-separated masquerading devices, exact or prefix ('eth+'); empty: the devices with a default route.")
        case .enableIPMasqAgent:
            Spec(json: ["enableIPMasqAgent"], kind: .bool,
                 help: "Apply the ip-masq-agent non-masquerade list (true or false; default false).")
        case .ipMasqAgentConfigPath:
            Spec(json: ["ipMasqAgentConfigPath"], kind: .text, help: "The ip-masq-agent config file.")
        case .clusterNodeIPs:
            Spec(json: ["clusterNodeIPs"], kind: .list,
                 help: "Comma-separated addresses of the other cluster nodes, never masqueraded to.")
        case .snatPortRange:
            Spec(json: ["snatPortRange"], kind: .text,
                 help: "Source ports masqueraded flows may take, LOW-HIGH (default 32768-65535).")
        case .natMaxEntries:
            Spec(json: ["natMaxEntries"], kind: .integer, help: "Size of the NAT table in entries (default 524288).")
        case .socketPath:
            Spec(json: ["socketPath"], kind: .text, help: "The control API's Unix socket (default /run/masq/masqd.sock).")
        case .socketGroup:
            Spec(json: ["socketGroup"], kind: .optionalText, help: "The group that owns the control socket.")
        case .prometheusServeAddr:
            Spec(json: ["prometheusServeAddr"], kind: .optionalText,
                 help: "Also serve /metrics and /healthz over TCP at this address: an IP literal or localhost (:9962, 127.0.0.1:9962, [::1]:9962; default empty: off).")
        case .bpffsRoot:
            Spec(json: ["bpffsRoot"], kind: .text, help: "Where maps and links are pinned (default /sys/fs/bpf/masq).")
        case .logLevel:
            Spec(json: ["logLevel"], kind: .text,
                 help: "trace, debug, info, notice, warning, error or critical (default info).")
        case .attachMode:
            Spec(json: ["attachMode"], kind: .text, help: "auto, tcx (Linux 6.6+) or tc (clsact); default auto.")
        case .conntrackTCPSynTimeout:
            Spec(json: ["conntrack", "tcpSynTimeout"], kind: .seconds,
                 help: "How long a TCP flow waits for its handshake to complete (duration such as 60s; default 60s).")
        case .conntrackTCPEstablishedTimeout:
            Spec(json: ["conntrack", "tcpEstablishedTimeout"], kind: .seconds,
                 help: "How long an idle established TCP flow lives (default 6h).")
        case .conntrackTCPFinWaitTimeout:
            Spec(json: ["conntrack", "tcpFinWaitTimeout"], kind: .seconds,
                 help: "How long a TCP flow lives after one side's FIN until the other side answers (default 2m).")
        case .conntrackTCPCloseWaitTimeout:
            Spec(json: ["conntrack", "tcpCloseWaitTimeout"], kind: .seconds,
                 help: "How long an idle half-closed TCP flow lives once the FIN was answered (default 1m).")
        case .conntrackTCPClosingTimeout:
            Spec(json: ["conntrack", "tcpClosingTimeout"], kind: .seconds,
                 help: "How long a TCP flow lives once both sides sent a FIN, or after an in-window RST (default 10s).")
        case .conntrackUDPTimeout:
            Spec(json: ["conntrack", "udpTimeout"], kind: .seconds,
                 help: "How long an idle UDP flow lives before any reply (default 30s).")
        case .conntrackUDPRepliedTimeout:
            Spec(json: ["conntrack", "udpRepliedTimeout"], kind: .seconds,
                 help: "How long an idle UDP flow lives once replies were seen (default 2m).")
        case .conntrackICMPTimeout:
            Spec(json: ["conntrack", "icmpTimeout"], kind: .seconds, help: "How long an idle ICMP echo flow lives (default 30s).")
        case .conntrackGCInterval:
            Spec(json: ["conntrack", "gcInterval"], kind: .seconds,
                 help: "The longest time between two conntrack GC passes; they come sooner when many flows expire or ports run short (default 1m).")
        }
    }
}

/// A config key's value as `/v1/config` carries it.
public enum ConfigValue: Sendable, Equatable {
    case bool(Bool)
    case integer(Int)
    /// A duration: seconds in JSON, `6h`-style text in the config file.
    case seconds(Double)
    /// Text; nil (absent from the JSON) is unset.
    case text(String?)
    case list([String])

    public enum Kind: Sendable {
        case bool, integer, seconds, text, optionalText, list
    }

    /// The value as masqd's config file spells it.
    public var fileValue: ConfigFileValue {
        switch self {
        case .bool(let b): .scalar(String(b))
        case .integer(let n): .scalar(String(n))
        case .seconds(let s): .scalar(DurationText.format(seconds: s))
        case .text(let t): t.map(ConfigFileValue.scalar) ?? .unset
        case .list(let items): .list(items)
        }
    }
}
