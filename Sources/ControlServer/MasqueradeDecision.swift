import API
import CMasq
import Datapath

/// The datapath's egress decision, restated in Swift for `/v1/explain`: the same checks in the
/// same order as `masq_v4_egress` (bpf/lib/masq.h) and `snat_v4_nat` / `snat_v4_nat_can_skip`
/// (bpf/lib/nat.h), applied to the maps as read back (`DatapathView`). When the C changes,
/// this changes with it; its tests name each rule.
public enum MasqueradeDecision {
    /// An existing EGRESS entry for the packet's tuple.
    public struct ExistingFlow: Sendable, Equatable {
        public var inbound: Bool
        public var host: Bool
        public var toAddress: IPv4Address
        public var toPort: UInt16

        public init(inbound: Bool, host: Bool = false, toAddress: IPv4Address, toPort: UInt16) {
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
        guard case .v4(let src) = packet.src, case .v4(let dst) = packet.dst else {
            return ExplainResponse(masquerade: false, rule: .familyDisabled, device: device.name,
                                   reason: "This datapath translates IPv4 only; IPv6 passes untouched.")
        }
        // masq_device_lookup, then masq_v4_config: the device entry, then the family switch.
        guard let entry = view.devices[device.ifindex] else {
            return ExplainResponse(masquerade: false, rule: .notMasqueradingDevice, device: device.name,
                                   reason: "\(device.name) does not run masq's programs (it is not a masquerading device).")
        }
        guard view.ipv4Enabled else {
            return ExplainResponse(masquerade: false, rule: .familyDisabled, device: device.name,
                                   reason: "IPv4 masquerading is off (enable-ipv4-masquerade: false).")
        }
        // masq_v4_egress: the node's own flows, then pod sources.
        if let snat = entry.snatV4, src == snat {
            var response = ExplainResponse(
                masquerade: false, rule: .hostFlow, device: device.name, snatAddress: .v4(snat),
                reason: "\(src) is \(device.name)'s own address: the node's flow is tracked and keeps its source unless a pod flow holds that tuple.")
            if let existing, existing.toAddress != src || existing.toPort != packet.sport {
                response.masquerade = true
                response.snatPort = existing.toPort
                response.reason = "\(src) is \(device.name)'s own address; a pod flow held its tuple, so this host flow leaves with port \(existing.toPort)."
            }
            return response
        }
        guard longestMatch(view.podCIDRsV4, .v4(src)) != nil else {
            return ExplainResponse(masquerade: false, rule: .podCIDRMiss, device: device.name,
                                   reason: "\(src) is not inside any pod CIDR: only pod traffic is masqueraded.")
        }
        // snat_v4_nat_can_skip, exclusions 1 to 3.
        if let native = view.nativeRoutingV4 {
            if native.contains(.v4(dst)) {
                return ExplainResponse(masquerade: false, rule: .nativeRoutingCIDR, cidr: native, device: device.name,
                                       reason: "\(dst) is inside the native-routing CIDR \(native): routed without masquerading.")
            }
        } else if let cidr = longestMatch(view.podCIDRsV4, .v4(dst)) {
            return ExplainResponse(masquerade: false, rule: .podCIDRDestination, cidr: cidr, device: device.name,
                                   reason: "\(dst) is inside the pod CIDR \(cidr) (no native-routing CIDR is set): pod-to-pod traffic is not masqueraded.")
        }
        if view.nonMasqueradeEnabled, let cidr = longestMatch(view.nonMasqueradeV4, .v4(dst)) {
            return ExplainResponse(masquerade: false, rule: .nonMasqueradeCIDR, cidr: cidr, device: device.name,
                                   reason: "\(dst) is inside the non-masquerade CIDR \(cidr).")
        }
        if view.nodeIPsV4.contains(dst) {
            return ExplainResponse(masquerade: false, rule: .clusterNode, device: device.name,
                                   reason: "\(dst) is a cluster node (cluster-node-ips).")
        }
        // ct_extract_tuple4: other protocols pass untranslated.
        guard [.tcp, .udp, .icmp].contains(packet.proto) else {
            return ExplainResponse(masquerade: false, rule: .protocolNotTranslated, device: device.name,
                                   reason: "\(packet.proto.rawValue) is not translated: only TCP, UDP and ICMP echo are.")
        }
        // Exclusion 4: a flow that came in to the pod.
        if let existing, existing.inbound {
            return ExplainResponse(masquerade: false, rule: .inboundReply, device: device.name,
                                   reason: "A connection from \(dst) came in to \(src): its replies leave with the pod's address.")
        }
        // Fail closed: without an SNAT address the packet is dropped, never sent with the pod's.
        guard let snat = entry.snatV4 else {
            return ExplainResponse(masquerade: false, rule: .noSNATAddress, device: device.name,
                                   reason: "\(device.name) has no IPv4 address to masquerade to: the packet is dropped (\(DropReason(DROP_NO_SNAT_ADDRESS).label)).")
        }
        if let existing {
            return ExplainResponse(masquerade: true, rule: .masquerade, device: device.name, snatAddress: .v4(existing.toAddress),
                                   snatPort: existing.toPort,
                                   reason: "Masqueraded on \(device.name) to \(existing.toAddress):\(existing.toPort) (an existing flow).")
        }
        return ExplainResponse(masquerade: true, rule: .masquerade, device: device.name, snatAddress: .v4(snat),
                               reason: "Masqueraded on \(device.name) to \(snat), keeping the source port when it is free inside \(view.portRange.lowerBound)-\(view.portRange.upperBound).")
    }

    /// The longest prefix in `prefixes` that contains `address` (what an LPM trie lookup finds).
    static func longestMatch(_ prefixes: [IPPrefix], _ address: IPAddress) -> IPPrefix? {
        prefixes.filter { $0.contains(address) }.max { $0.length < $1.length }
    }
}
