// /v1/explain restates the egress decision in Swift (MasqueradeDecision); these cases run the
// same packet through the BPF program (BPF_PROG_TEST_RUN) and through explain, on the same
// maps, and require the same verdict: masqueraded or not, and where the datapath's counters
// tell, the same kind of outcome (a drop for want of an SNAT address, a tracked host flow).

import API
import CMasq
@testable import ControlServer
@testable import Datapath
import NetworkTypes
import Testing

@Suite("explain agrees with the datapath")
struct ExplainAgreementTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var flags: UInt32 = MASQ_CFG_IPV4_MASQ
        var native: (PacketIPv4, UInt32)?
        var device: Device = .withSNAT
        var podCIDRs: [(PacketIPv4, UInt32)] = [Net.podCIDR]
        var nonMasquerade: [(PacketIPv4, UInt32)] = []
        var nodes: [PacketIPv4] = []
        var src: PacketIPv4 = Net.pod1
        var dst: PacketIPv4 = Net.server
        var l4: L4 = .tcp(sport: 40000, dport: 443)

        enum Device: Sendable { case withSNAT, withoutSNAT, none }

        var testDescription: String { name }

        /// The packet as explain takes it.
        var query: ExplainQuery {
            let (proto, sport, dport): (L4Protocol, UInt16, UInt16) = switch l4 {
            case let .tcp(sport, dport, _, _, _): (.tcp, sport, dport)
            case let .udp(sport, dport, _): (.udp, sport, dport)
            case let .icmpEcho(_, id, _): (.icmp, id, 0)
            case .icmp: (.icmp, 0, 0)
            case let .raw(number, _): (L4Protocol(number: number), 0, 0)
            }
            return ExplainQuery(src: .v4(IPv4Address(src.description)!), dst: .v4(IPv4Address(dst.description)!),
                                proto: proto, sport: sport, dport: dport)
        }
    }

    static let cases: [Case] = [
        Case(name: "pod to the outside: masqueraded"),
        Case(name: "UDP pod to the outside", l4: .udp(sport: 40000, dport: 53)),
        Case(name: "ICMP echo pod to the outside", l4: .icmpEcho(type: ICMPType.echo, id: 7)),
        Case(name: "pod to pod CIDR without a native-routing CIDR", dst: Net.otherPod),
        Case(name: "source outside every pod CIDR", src: Net.notPod),
        Case(name: "the node's own address", src: Net.snat),
        Case(name: "inside the native-routing CIDR", native: ("10.0.0.0", 8), dst: "10.200.3.4"),
        Case(name: "pod CIDR destination outside the native-routing CIDR", native: ("10.0.0.0", 8),
             podCIDRs: [Net.podCIDR, ("172.20.0.0", 16)], dst: "172.20.1.1"),
        Case(name: "non-masquerade list, agent on", flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_NONMASQ,
             nonMasquerade: [("93.184.0.0", 16)]),
        Case(name: "non-masquerade list, agent off", nonMasquerade: [("93.184.0.0", 16)]),
        Case(name: "non-masquerade list, longer prefix of the destination", flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_NONMASQ,
             nonMasquerade: [("93.0.0.0", 8), ("93.184.216.0", 24)]),
        Case(name: "a cluster node", nodes: [Net.node2], dst: Net.node2),
        Case(name: "IPv4 masquerading off", flags: 0),
        Case(name: "a device with no IPv4 address", device: .withoutSNAT),
        Case(name: "not a masquerading device", device: .none),
        Case(name: "a protocol masq does not translate (GRE)", l4: .raw(proto: 47, bytes: [0, 0, 0x08, 0])),
    ]

    @Test("the same verdict from BPF_PROG_TEST_RUN and from explain", arguments: cases)
    func agree(_ c: Case) throws {
        let dp = try TestDatapath()
        try dp.setConfig(flags: c.flags, native: c.native)
        switch c.device {
        case .withSNAT: try dp.addDevice(snat: Net.snat)
        case .withoutSNAT: try dp.addDevice(snat: Net.snat, hasV4: false)
        case .none: break
        }
        for (address, length) in c.podCIDRs { try dp.addPodCIDR(address, length) }
        for (address, length) in c.nonMasquerade { try dp.addNonMasqCIDR(address, length) }
        for node in c.nodes { try dp.addNode(node) }

        let explained = MasqueradeDecision.explain(
            c.query, device: .init(name: "test0", ifindex: Net.testIfindex), view: try dp.object.readView(), existing: nil)

        let frame = ipv4Frame(src: c.src, dst: c.dst, c.l4)
        let out = try dp.run(.egress, frame)
        let masqueraded = out.verdict == TC.pass && out.parsed.src == Net.snat && c.src != Net.snat
        #expect(explained.masquerade == masqueraded, "explain: \(explained.rule) (\(explained.reason)); datapath verdict \(out.verdict)")
        switch explained.rule {
        case .masquerade:
            #expect(try dp.stat(MASQ_STAT_SNAT_PACKETS) == 1)
        case .noSNATAddress:
            let dropped = try dp.dropped(DROP_NO_SNAT_ADDRESS)
            #expect(out.verdict == TC.shot && dropped == 1)
        case .hostFlow:
            // Tracked, not translated.
            let hostFlows = try dp.stat(MASQ_STAT_HOST_FLOWS)
            #expect(out.frame == frame && hostFlows == 1)
        default:
            // An exclusion: passed untouched, nothing tracked, nothing counted.
            let tracked = try dp.entries().count, dropped = try dp.droppedTotal()
            #expect(out.verdict == TC.pass && out.frame == frame)
            #expect(tracked == 0 && dropped == 0)
        }
    }
}
