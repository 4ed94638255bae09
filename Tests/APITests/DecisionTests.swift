import API
@testable import ControlServer

@testable import Datapath
import Testing

/// `/v1/explain`'s decision, rule by rule, in the datapath's order (bpf/lib/masq.h, nat.h).
@Suite("masquerade decision")
struct DecisionTests {
    static let ext0 = MasqueradeDecision.EgressDevice(name: "ext0", ifindex: 3)

    static var view: DatapathView {
        var v = DatapathView()
        v.ipv4Enabled = true
        v.nonMasqueradeEnabled = true
        v.devices = [3: .init(snatV4: IPv4Address("100.0.0.1"))]
        v.podCIDRsV4 = [try! IPPrefix("10.244.0.0/16"), try! IPPrefix("10.244.1.0/24")]
        v.nonMasqueradeV4 = [try! IPPrefix("100.0.0.0/8"), try! IPPrefix("100.0.9.0/24")]
        v.nodeIPsV4 = [IPv4Address("192.0.2.10")!]
        return v
    }

    static func ask(_ src: String, _ dst: String, proto: L4Protocol = .tcp, view: DatapathView = view,
                    device: MasqueradeDecision.EgressDevice? = ext0,
                    existing: MasqueradeDecision.ExistingFlow? = nil) -> ExplainResponse {
        MasqueradeDecision.explain(ExplainQuery(src: IPAddress(src)!, dst: IPAddress(dst)!, proto: proto,
                                                sport: 40000, dport: 443),
                                   device: device, view: view, existing: existing)
    }

    @Test("a pod's packet to the outside is masqueraded to the device's address")
    func masquerade() {
        let r = Self.ask("10.244.1.2", "1.1.1.1")
        #expect(r.masquerade && r.rule == .masquerade && r.device == "ext0" && r.snatAddress == IPAddress("100.0.0.1"))
    }

    @Test("an existing flow reports the port it was given")
    func existingFlow() {
        let r = Self.ask("10.244.1.2", "1.1.1.1", existing: .init(inbound: false, toAddress: IPAddress("100.0.0.1")!, toPort: 33000))
        #expect(r.masquerade && r.snatPort == 33000)
    }

    @Test("a device without masq's programs, or no route at all, masquerades nothing")
    func notMasqueradingDevice() {
        #expect(Self.ask("10.244.1.2", "1.1.1.1", device: .init(name: "eth9", ifindex: 9)).rule == .notMasqueradingDevice)
        #expect(Self.ask("10.244.1.2", "1.1.1.1", device: nil).rule == .notMasqueradingDevice)
    }

    @Test("IPv4 masquerading off is the family rule")
    func familyDisabled() {
        var v = Self.view
        v.ipv4Enabled = false
        #expect(Self.ask("10.244.1.2", "1.1.1.1", view: v).rule == .familyDisabled)
        #expect(Self.ask("fd00::2", "2001:db8::1").rule == .familyDisabled)
    }

    @Test("the node's own address is a host flow, not a pod flow; tracked only from a port of snat-port-range")
    func hostFlow() {
        let tracked = Self.ask("100.0.0.1", "1.1.1.1")
        #expect(tracked.rule == .hostFlow && tracked.reason.contains("is tracked"), "\(tracked.reason)")
        let server = MasqueradeDecision.explain(ExplainQuery(src: IPAddress("100.0.0.1")!, dst: IPAddress("1.1.1.1")!, proto: .tcp,
                                                             sport: 1000, dport: 443),
                                                device: Self.ext0, view: Self.view, existing: nil)
        #expect(server.rule == .hostFlow && server.reason.contains("untracked, since port 1000 is outside snat-port-range 32768-65535"),
                "\(server.reason)")
    }

    @Test("a source outside the pod CIDRs is a pod-cidr miss")
    func podMiss() {
        let r = Self.ask("172.16.0.5", "1.1.1.1")
        #expect(!r.masquerade && r.rule == .podCIDRMiss)
    }

    @Test("exclusion 1: the native-routing CIDR when set, else the pod CIDRs (longest match named)")
    func exclusionOne() throws {
        let r = Self.ask("10.244.1.2", "10.244.1.9")
        let pod = try IPPrefix("10.244.1.0/24")
        #expect(r.rule == .podCIDRDestination && r.cidr == pod)
        var v = Self.view
        v.nativeRoutingV4 = try IPPrefix("10.0.0.0/8")
        let n = Self.ask("10.244.1.2", "10.9.9.9", view: v)
        #expect(n.rule == .nativeRoutingCIDR && n.cidr == v.nativeRoutingV4)
        // With a native-routing CIDR the pod CIDRs no longer stand in.
        #expect(Self.ask("10.244.1.2", "1.1.1.1", view: v).rule == .masquerade)
    }

    @Test("exclusion 2: the non-masquerade list names the longest matching CIDR, only when enabled")
    func exclusionTwo() throws {
        let r = Self.ask("10.244.1.2", "100.0.9.2")
        let cidr = try IPPrefix("100.0.9.0/24")
        #expect(r.rule == .nonMasqueradeCIDR && r.cidr == cidr)
        var v = Self.view
        v.nonMasqueradeEnabled = false
        #expect(Self.ask("10.244.1.2", "100.0.9.2", view: v).rule == .masquerade)
    }

    @Test("exclusion 3: cluster nodes")
    func exclusionThree() {
        #expect(Self.ask("10.244.1.2", "192.0.2.10").rule == .clusterNode)
    }

    @Test("exclusion 4: replies of a connection that came in to the pod")
    func exclusionFour() {
        let r = Self.ask("10.244.1.2", "1.1.1.1", existing: .init(inbound: true, toAddress: IPAddress("10.244.1.2")!, toPort: 443))
        #expect(!r.masquerade && r.rule == .inboundReply)
    }

    /// The same node, dual-stack: ext0 has fd00:50::1, the pods fd00:10:244::/56.
    static var dualStack: DatapathView {
        var v = view
        v.ipv6Enabled = true
        v.devices = [3: .init(snatV4: IPv4Address("100.0.0.1"), snatV6: IPv6Address("fd00:50::1"))]
        v.podCIDRsV6 = [try! IPPrefix("fd00:10:244::/56")]
        v.nonMasqueradeV6 = [try! IPPrefix("fd00:99::/32"), try! IPPrefix("fe80::/10")]
        v.nodeIPsV6 = [IPv6Address("fd00:50::20")!]
        return v
    }

    @Test("IPv6: a pod's packet to the outside is masqueraded to the device's IPv6 address, by the same rules in the same order")
    func ipv6Rules() throws {
        let v = Self.dualStack
        let pod = "fd00:10:244:1::2"
        let out = Self.ask(pod, "2001:db8::1", view: v)
        #expect(out.masquerade && out.rule == .masquerade && out.snatAddress == IPAddress("fd00:50::1"))
        #expect(Self.ask(pod, "2001:db8::1", proto: .icmpv6, view: v).rule == .masquerade)
        #expect(Self.ask(pod, "2001:db8::1", proto: .icmp, view: v).rule == .protocolNotTranslated)
        #expect(Self.ask("fd00:50::1", "2001:db8::1", view: v).rule == .hostFlow)
        #expect(Self.ask("fd00:77::2", "2001:db8::1", view: v).rule == .podCIDRMiss)
        let podDst = Self.ask(pod, "fd00:10:244:2::9", view: v)
        let podCIDR = try IPPrefix("fd00:10:244::/56")
        #expect(podDst.rule == .podCIDRDestination && podDst.cidr == podCIDR)
        let excluded = Self.ask(pod, "fd00:99::5", view: v)
        let listed = try IPPrefix("fd00:99::/32")
        #expect(excluded.rule == .nonMasqueradeCIDR && excluded.cidr == listed)
        #expect(Self.ask(pod, "fd00:50::20", view: v).rule == .clusterNode)
        var native = v
        native.nativeRoutingV6 = try IPPrefix("fd00::/16")
        let routed = Self.ask(pod, "fd00:77::1", view: native)
        #expect(routed.rule == .nativeRoutingCIDR && routed.cidr == native.nativeRoutingV6)
        let existing = Self.ask(pod, "2001:db8::1", view: v,
                                existing: .init(inbound: false, toAddress: IPAddress("fd00:50::1")!, toPort: 33001))
        #expect(existing.masquerade && existing.snatPort == 33001)
        // The IPv4 side is untouched by the IPv6 maps.
        #expect(Self.ask("10.244.1.2", "1.1.1.1", view: v).snatAddress == IPAddress("100.0.0.1"))
    }

    @Test("IPv6: link-local and multicast sources or destinations are link-scoped, before the non-masquerade list")
    func ipv6LinkScoped() {
        let v = Self.dualStack
        for (src, dst) in [("fd00:10:244:1::2", "fe80::1"), ("fe80::2", "2001:db8::1"), ("fd00:10:244:1::2", "ff02::1")] {
            let r = Self.ask(src, dst, view: v)
            #expect(!r.masquerade && r.rule == .linkScoped, "\(src) -> \(dst): \(r)")
        }
    }

    @Test("IPv6: masquerading off is the family rule; a device without a global IPv6 address drops (IPv4 goes on)")
    func ipv6FamilyAndAddress() {
        var off = Self.dualStack
        off.ipv6Enabled = false
        let r = Self.ask("fd00:10:244:1::2", "2001:db8::1", view: off)
        #expect(r.rule == .familyDisabled && r.reason.contains("enable-ipv6-masquerade"))
        var noAddress = Self.dualStack
        noAddress.devices = [3: .init(snatV4: IPv4Address("100.0.0.1"), snatV6: nil)]
        let dropped = Self.ask("fd00:10:244:1::2", "2001:db8::1", view: noAddress)
        #expect(!dropped.masquerade && dropped.rule == .noSNATAddress && dropped.reason.contains("global IPv6"))
        #expect(Self.ask("10.244.1.2", "1.1.1.1", view: noAddress).rule == .masquerade)
    }

    @Test("protocols other than TCP, UDP and ICMP pass untranslated")
    func otherProtocols() {
        #expect(Self.ask("10.244.1.2", "1.1.1.1", proto: .icmpv6).rule == .protocolNotTranslated)
        #expect(Self.ask("10.244.1.2", "1.1.1.1", proto: .icmp).rule == .masquerade)
    }
}
