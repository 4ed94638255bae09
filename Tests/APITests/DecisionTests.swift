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
        let r = Self.ask("10.244.1.2", "1.1.1.1", existing: .init(inbound: false, toAddress: IPv4Address("100.0.0.1")!, toPort: 33000))
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

    @Test("the node's own address is a host flow, not a pod flow")
    func hostFlow() {
        #expect(Self.ask("100.0.0.1", "1.1.1.1").rule == .hostFlow)
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
        let r = Self.ask("10.244.1.2", "1.1.1.1", existing: .init(inbound: true, toAddress: IPv4Address("10.244.1.2")!, toPort: 443))
        #expect(!r.masquerade && r.rule == .inboundReply)
    }

    @Test("protocols other than TCP, UDP and ICMP pass untranslated")
    func otherProtocols() {
        #expect(Self.ask("10.244.1.2", "1.1.1.1", proto: .icmpv6).rule == .protocolNotTranslated)
        #expect(Self.ask("10.244.1.2", "1.1.1.1", proto: .icmp).rule == .masquerade)
    }
}
