import API
import CMasq
import Datapath

/// The datapath's egress decision, restated in Swift for `/v1/explain`: the same checks in the
/// same order as `masq_v4_egress` / `masq_v6_egress` (bpf/lib/masq.h) and `snat_v4_nat` /
/// `snat_v4_nat_can_skip` (bpf/lib/nat.h) or their v6 twins (bpf/lib/nat6.h), applied to the
/// maps as read back (`DatapathView`). When the C changes,
/// this changes with it; its tests name each rule.
public enum MasqueradeDecision {
    /// An existing EGRESS entry for the packet's tuple.
    public struct ExistingFlow: Sendable, Equatable {
        public var inbound: Bool
        public var host: Bool
        public var toAddress: IPAddress
        public var toPort: UInt16

        public init(inbound: Bool, host: Bool = false, toAddress: IPAddress, toPort: UInt16) {
            self.inbound = inbound
            self.host = host
            self.toAddress = toAddress
            self.toPort = toPort
        }
    }

    /// The device the packet leaves through.
    public struct EgressDevice: Sendable, Equatable {
        public var name: String
        public var ifindex: UInt32

        public init(name: String, ifindex: UInt32) {
            self.name = name
            self.ifindex = ifindex
        }
    }

    /// What the datapath does with `packet` leaving through `device` (nil: no route), given the
    /// maps (`view`) and the flow entry for its tuple, if any (`existing`).
    public static func explain(_ packet: ExplainQuery, device: EgressDevice?, view: DatapathView,
                               existing: ExistingFlow?) -> ExplainResponse {
        guard let device else {
            return ExplainResponse(masquerade: false, rule: .notMasqueradingDevice,
                                   reason: "No route to \(packet.dst): the packet leaves through no device.")
        }
        let (src, dst) = (packet.src, packet.dst)
        // masq_device_lookup, then masq_family_config: the device entry, then the family switch.
        guard let entry = view.devices[device.ifindex] else {
            return ExplainResponse(masquerade: false, rule: .notMasqueradingDevice, device: device.name,
                                   reason: "\(device.name) does not run masq's programs (it is not a masquerading device).")
        }
        let family = Family(view, entry, v6: src.bitWidth == 128)
        guard family.enabled else {
            return ExplainResponse(masquerade: false, rule: .familyDisabled, device: device.name,
                                   reason: "\(family.name) masquerading is off (\(family.configKey): false).")
        }
        // masq_v6_egress: link-scoped traffic (neighbour discovery, router solicitation, MLD,
        // link-local or multicast addresses) is never touched.
        if family.isIPv6, let scoped = [src, dst].first(where: Self.isLinkScoped) {
            return ExplainResponse(masquerade: false, rule: .linkScoped, device: device.name,
                                   reason: "\(scoped) is link-scoped (link-local or multicast): neighbour discovery, router and multicast listener messages and link-local traffic pass untouched.")
        }
        // masq_v4_egress / masq_v6_egress: the node's own flows, then pod sources.
        if let snat = family.snat, src == snat {
            // A port no pod mapping can take needs no tracking (snat_v4_nat_track_host).
            let tracked = view.portRange.contains(packet.sport)
            var response = ExplainResponse(
                masquerade: false, rule: .hostFlow, device: device.name, snatAddress: snat,
                reason: tracked
                    ? "\(src) is \(device.name)'s own address: the node's flow is tracked and keeps its source unless a pod flow holds that tuple."
                    : "\(src) is \(device.name)'s own address: the node's flow keeps its source, untracked, since port \(packet.sport) is outside snat-port-range \(view.portRange.lowerBound)-\(view.portRange.upperBound), where no pod flow can take its tuple.")
            if let existing, existing.toAddress != src || existing.toPort != packet.sport {
                response.masquerade = true
                response.snatPort = existing.toPort
                response.reason = "\(src) is \(device.name)'s own address; a pod flow held its tuple, so this host flow leaves with port \(existing.toPort)."
            }
            return response
        }
        guard longestMatch(family.podCIDRs, src) != nil else {
            return ExplainResponse(masquerade: false, rule: .podCIDRMiss, device: device.name,
                                   reason: "\(src) is not inside any pod CIDR: only pod traffic is masqueraded.")
        }
        // snat_v4_nat_can_skip / snat_v6_nat_can_skip, exclusions 1 to 3.
        if let native = family.nativeRouting {
            if native.contains(dst) {
                return ExplainResponse(masquerade: false, rule: .nativeRoutingCIDR, cidr: native, device: device.name,
                                       reason: "\(dst) is inside the native-routing CIDR \(native): routed without masquerading.")
            }
        } else if let cidr = longestMatch(family.podCIDRs, dst) {
            return ExplainResponse(masquerade: false, rule: .podCIDRDestination, cidr: cidr, device: device.name,
                                   reason: "\(dst) is inside the pod CIDR \(cidr) (no native-routing CIDR is set): pod-to-pod traffic is not masqueraded.")
        }
        if view.nonMasqueradeEnabled, let cidr = longestMatch(family.nonMasquerade, dst) {
            return ExplainResponse(masquerade: false, rule: .nonMasqueradeCIDR, cidr: cidr, device: device.name,
                                   reason: "\(dst) is inside the non-masquerade CIDR \(cidr).")
        }
        if family.nodeIPs.contains(dst) {
            return ExplainResponse(masquerade: false, rule: .clusterNode, device: device.name,
                                   reason: "\(dst) is a cluster node (cluster-node-ips).")
        }
        // ct_extract_tuple4 / ct_extract_tuple6: other protocols pass untranslated.
        guard family.protocols.contains(packet.proto) else {
            return ExplainResponse(masquerade: false, rule: .protocolNotTranslated, device: device.name,
                                   reason: "\(packet.proto.rawValue) is not translated over \(family.name): only \(family.protocols.map { $0.rawValue.uppercased() }.joined(separator: ", ")) (echo) are.")
        }
        // Exclusion 4: a flow that came in to the pod.
        if let existing, existing.inbound {
            return ExplainResponse(masquerade: false, rule: .inboundReply, device: device.name,
                                   reason: "A connection from \(dst) came in to \(src): its replies leave with the pod's address.")
        }
        // Fail closed: without an SNAT address the packet is dropped, never sent with the pod's.
        guard let snat = family.snat else {
            return ExplainResponse(masquerade: false, rule: .noSNATAddress, device: device.name,
                                   reason: "\(device.name) has no \(family.isIPv6 ? "global IPv6" : "IPv4") address to masquerade to: the packet is dropped (\(DropReason(DROP_NO_SNAT_ADDRESS).label)).")
        }
        if let existing {
            return ExplainResponse(masquerade: true, rule: .masquerade, device: device.name, snatAddress: existing.toAddress,
                                   snatPort: existing.toPort,
                                   reason: "Masqueraded on \(device.name) to \(existing.toAddress) port \(existing.toPort) (an existing flow).")
        }
        return ExplainResponse(masquerade: true, rule: .masquerade, device: device.name, snatAddress: snat,
                               reason: "Masqueraded on \(device.name) to \(snat), keeping the source port when it is free inside \(view.portRange.lowerBound)-\(view.portRange.upperBound).")
    }

    /// The maps' inputs of the packet's family, as the programs read them.
    private struct Family {
        var isIPv6: Bool
        var enabled: Bool
        var snat: IPAddress?
        var nativeRouting: IPPrefix?
        var podCIDRs: [IPPrefix]
        var nonMasquerade: [IPPrefix]
        var nodeIPs: Set<IPAddress>
        var name: String { isIPv6 ? "IPv6" : "IPv4" }
        var configKey: String { isIPv6 ? "enable-ipv6-masquerade" : "enable-ipv4-masquerade" }
        /// What ct_extract_tuple4 / ct_extract_tuple6 track (ICMP: echo only).
        var protocols: [L4Protocol] { isIPv6 ? [.tcp, .udp, .icmpv6] : [.tcp, .udp, .icmp] }

        init(_ view: DatapathView, _ device: DatapathView.Device, v6: Bool) {
            isIPv6 = v6
            if v6 {
                enabled = view.ipv6Enabled
                snat = device.snatV6.map(IPAddress.v6)
                nativeRouting = view.nativeRoutingV6
                podCIDRs = view.podCIDRsV6
                nonMasquerade = view.nonMasqueradeV6
                nodeIPs = Set(view.nodeIPsV6.map(IPAddress.v6))
            } else {
                enabled = view.ipv4Enabled
                snat = device.snatV4.map(IPAddress.v4)
                nativeRouting = view.nativeRoutingV4
                podCIDRs = view.podCIDRsV4
                nonMasquerade = view.nonMasqueradeV4
                nodeIPs = Set(view.nodeIPsV4.map(IPAddress.v4))
            }
        }
    }

    /// ipv6_addr_is_link_scoped: fe80::/10 and multicast ff00::/8.
    static func isLinkScoped(_ address: IPAddress) -> Bool {
        guard case .v6(let a) = address else { return false }
        return (a.bytes[0] == 0xfe && a.bytes[1] & 0xc0 == 0x80) || a.bytes[0] == 0xff
    }

    /// The longest prefix in `prefixes` that contains `address` (what an LPM trie lookup finds).
    static func longestMatch(_ prefixes: [IPPrefix], _ address: IPAddress) -> IPPrefix? {
        prefixes.filter { $0.contains(address) }.max { $0.length < $1.length }
    }
}
